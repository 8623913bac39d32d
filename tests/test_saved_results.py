"""Files later runs read back: a write cut short leaves the previous version whole, and a damaged
file is named and set aside, never fatal and never deleted."""
from __future__ import annotations

import json

import pytest

from benchmarks import saved_json
from dafnet_plugin.data.builtin import make_edits, to_counterfact


def cut_short(monkeypatch) -> None:
    """Every JSON write from now on dies half-way, as under a kill or on a full disk."""
    def dump(data, f, **kw):
        f.write(json.dumps(data)[:10])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(saved_json.json, "dump", dump)


def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    saved_json.write_json(path, {"rows": [1, 2]})
    cut_short(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        saved_json.write_json(path, {"rows": [1, 2, 3]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no partial file left behind


@pytest.mark.parametrize("damage", [b'{"rows": [{"method": "DAF', b"", b"\xff\xfe not text"])
def test_a_damaged_file_is_set_aside_and_named(tmp_path, capsys, damage):
    path = tmp_path / "results.json"
    path.write_bytes(damage)
    assert saved_json.read_json(path) is None
    kept = list(tmp_path.glob("results.json.damaged-*"))
    assert not path.exists() and len(kept) == 1 and kept[0].read_bytes() == damage
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: {path} is damaged") and kept[0].name in err and "\n" not in err
    assert saved_json.read_json(path) is None and capsys.readouterr().err == ""  # missing: no warning


@pytest.fixture
def fake_suite(tiny_gpt2_dir, tmp_path, monkeypatch):
    """The suite with a stand-in editor whose scores are known (no training, no editing): what is
    tested is what happens to the rows."""
    pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
    from types import SimpleNamespace

    from benchmarks import compare

    def scores(editor, records, T, bar):
        row = {"n_edits": len(records), "rewrite_acc": 1 / T, "rephrase_acc": 0.5, "locality": 0.25,
               "gen_em": 0.125, "sec_per_edit": 0.01}
        return {"single": row} if T == 1 else {"immediate": row, "final": dict(row, rewrite_acc=0.5 / T)}

    monkeypatch.setattr(compare, "build_editor", lambda method, ctx, cfg: SimpleNamespace(hparams=None))
    monkeypatch.setattr(compare, "run_sequences", scores)
    val = tmp_path / "val.json"
    val.write_text(json.dumps(to_counterfact(make_edits(12, split="val"))))
    cfg = compare.load_config(None, None, [
        f"model={tiny_gpt2_dir}", "hparams_name=tiny-gpt2", f"train=[{val}]", f"eval={val}", "methods=[DAFNet]",
        "T=[4]", "n_single=3", "threads=1", f"out={tmp_path / 'run'}", f"cache={tmp_path / 'cache'}"])
    return compare, cfg, tmp_path / "run" / "results.json"


def test_a_suite_run_cut_short_while_saving_keeps_the_earlier_rows(fake_suite, monkeypatch):
    compare, cfg, path = fake_suite
    first = compare.run(cfg)["rows"]
    assert len(first) == 3
    with monkeypatch.context() as patch:
        cut_short(patch)
        cfg.T = [4, 2]
        with pytest.raises(OSError):
            compare.run(cfg)
    assert json.loads(path.read_text())["rows"] == first
    rows = compare.run(cfg)["rows"]  # resumes: the earlier rows' values kept, the new length added
    assert rows[:3] == first and {(r["protocol"], r["T"]) for r in rows[3:]} == {("immediate", 2), ("final", 2)}


def test_a_suite_run_sets_a_damaged_results_file_aside(fake_suite, capsys):
    compare, cfg, path = fake_suite
    path.parent.mkdir(parents=True)
    path.write_text('{"rows": [{"method": "DAFNet", "protocol": "single"')
    rows = compare.run(cfg)["rows"]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert f"warning: {path} is damaged" in capsys.readouterr().err
    [kept] = path.parent.glob("results.json.damaged-*")
    assert kept.read_text() == '{"rows": [{"method": "DAFNet", "protocol": "single"'


def test_dafnets_training_budget_cut_short_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks.methods.dafnet import write_budget

    checkpoint = tmp_path / "tiny-gpt2.pt"
    checkpoint.with_suffix(".log.jsonl").write_text("".join(
        json.dumps({"step": step, "k": 2, "seconds": step, "run_started": 0}) + "\n" for step in (1, 2)))
    train = tmp_path / "train.json"
    train.write_text(json.dumps(to_counterfact(make_edits(6, split="train"))))
    config = SimpleNamespace(lr=1e-3, max_sequence=4, curriculum="stall", trunk_cache=False, trunk_pool=6)
    write_budget(checkpoint, config, 5.0, [str(train)])
    budget = tmp_path / "tiny-gpt2.pt.budget.json"
    saved = budget.read_text()
    assert json.loads(saved)["training_steps"] == 2
    cut_short(monkeypatch)
    with pytest.raises(OSError):
        write_budget(checkpoint, config, 7.0, [str(train)])
    assert budget.read_text() == saved


def test_a_mend_sweep_cut_short_while_saving_keeps_its_finished_settings(tmp_path, monkeypatch, capsys):
    pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
    from benchmarks import sweep_mend

    def scored(name, setting, *args):  # a setting's row, as run_setting gives it, without training
        return {"name": name, **setting, "layer_ids": [0], "budget": None, "n_edits": 4, "rewrite_acc": 1.0,
                "rephrase_acc": 0.5, "locality": 0.25, "gen_em": 1.0, "sec_per_edit": 0.01}
    monkeypatch.setattr(sweep_mend, "run_setting", scored)
    records, out = to_counterfact(make_edits(split="train"))[:30], tmp_path / "sweep"
    first = sweep_mend.sweep("tiny", records, {"center": {}}, out, 4, tmp_path / "cache")
    with monkeypatch.context() as patch:
        cut_short(patch)
        with pytest.raises(OSError):
            sweep_mend.sweep("tiny", records, {"center": {}, "lr=1e-5": {"lr": 1e-5}}, out, 4, tmp_path / "cache")
    assert json.loads((out / "sweep.json").read_text())["rows"] == first

    (out / "sweep.json").write_text('{"setup": {"model": "tiny"')  # damaged by a write before they were atomic
    rows = sweep_mend.sweep("tiny", records, {"center": {}}, out, 4, tmp_path / "cache")
    assert [r["name"] for r in rows] == ["center"] and "sweep.json is damaged" in capsys.readouterr().err
