"""The MEND settings sweep (benchmarks/sweep_mend.py), smoke-sized on the tiny facts model."""
from __future__ import annotations

import json

import pytest

import dafnet_plugin  # noqa: F401  imports the host
pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
from benchmarks import sweep_mend  # noqa: E402


def test_layer_specs():  # the held-apart split is tested in test_held_apart.py
    from benchmarks.methods.trained import parse_layers

    assert parse_layers("last3", 30) == [27, 28, 29]
    assert parse_layers("14-16", 30) == [14, 15, 16]
    assert parse_layers("3+9", 30) == [3, 9]


def test_smoke_sweep_trains_scores_and_resumes(tiny_facts_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--smoke", "--model", tiny_facts_model[1], "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--threads", "1"]
    rows = sweep_mend.main(argv)
    assert [(r["name"], r["status"]) for r in rows] == [("center", "ok"), ("host", "ok")], rows
    budgets = {r["name"]: r["budget"] for r in rows}
    assert (budgets["center"]["training_steps"], budgets["center"]["optimizer_updates"]) == (3, 3)
    assert (budgets["host"]["training_steps"], budgets["host"]["optimizer_updates"]) == (4, 2)
    assert rows[0]["layer_ids"] == rows[1]["layer_ids"] == [0, 1]
    for r in rows:
        assert r["n_edits"] == 4 and all(0 <= r[m] <= 1 for m in ("rewrite_acc", "rephrase_acc", "locality", "gen_em"))
    held = json.loads((out / "sweep.json").read_text())["setup"]["held_apart"]
    trained_on = {r["prompt"] for r in json.loads((out / "train-part.json").read_text())}
    assert len(held) == 4 and not trained_on & set(held)
    table = (out / "sweep.md").read_text()
    assert "| center | 0.0001 | 0.001 | 0.001 | 1 | 3 | 0-1 | 1 | 3 |" in table and "| host |" in table

    def refuse(*args, **kwargs):
        raise AssertionError("a finished setting ran again")
    monkeypatch.setattr(sweep_mend, "run_setting", refuse)
    assert sweep_mend.main(argv) == rows
