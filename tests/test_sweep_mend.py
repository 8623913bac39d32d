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


def test_mend_edits_all_mlp_weights_or_the_output_projections_only(tmp_path):
    from benchmarks.methods.trained import inner_params_for

    llama, gpt2 = tmp_path / "llama", tmp_path / "gpt2"
    for folder, config in ((llama, {"model_type": "llama", "num_hidden_layers": 30}),
                           (gpt2, {"model_type": "gpt2", "n_layer": 12})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    assert inner_params_for(llama, layers=[28, 29], mlp="down") == [
        "model.layers.28.mlp.down_proj.weight", "model.layers.29.mlp.down_proj.weight"]
    assert len(inner_params_for(llama, layers=[28, 29])) == 6
    assert inner_params_for(gpt2, n_layers=1, mlp="down") == ["transformer.h.11.mlp.c_proj.weight"]
    with pytest.raises(ValueError, match="mlp='up'"):
        inner_params_for(llama, mlp="up")
    assert sweep_mend._layers({"layers": "last3", "mlp": "down"}) == "last3 (down)"
    assert sweep_mend._layers({"layers": "last3"}) == "last3"


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
