"""The GPU preset's one command, on the CPU: a model in shards is checked and assembled, DAFNet
trains from it and the suite scores the archive it wrote."""
from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from dafnet_plugin.data.builtin import make_edits, to_counterfact

pytest.importorskip("easyeditor", reason="EasyEdit is not installed")

from benchmarks import gpu_preset  # noqa: E402


def test_a_model_missing_a_shard_is_named_before_any_work(tiny_gpt2_dir, tmp_path):
    model_dir = tmp_path / "model"
    AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).save_pretrained(model_dir, max_shard_size="100KB")
    shards = sorted(model_dir.glob("*.safetensors"))
    assert len(shards) > 1 and gpu_preset.check_model(model_dir) == model_dir
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=f"shards not carried yet: {shards[-1].name}"):
        gpu_preset.check_model(model_dir)
    with pytest.raises(FileNotFoundError, match="gpu_preset pack"):
        gpu_preset.check_model(tmp_path / "nothing")


def test_run_trains_then_scores_the_archive_through_the_suite(tiny_gpt2_dir, tmp_path):
    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(to_counterfact(make_edits(60, split="train"))))
    val.write_text(json.dumps(to_counterfact(make_edits(10, split="val"))))
    out = tmp_path / "run"
    gpu_preset.main(["run", "--device", "cpu", "--model-dir", str(tiny_gpt2_dir), "--steps", "3", "--T", "4",
                     "--n-single", "2", "--threads", "1", "--out", str(out), "hparams_name=tiny-gpt2",
                     "dataset=builtin", f"train=[{train}]", f"eval={val}", f"cache={tmp_path / 'cache'}"])
    log = [json.loads(line) for line in (out / "dafnet" / "dafnet.log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    rows = json.loads((out / "suite" / "results.json").read_text())["rows"]
    assert {(r["protocol"], r["T"], r["status"]) for r in rows} == {("single", 1, "ok"), ("immediate", 4, "ok"),
                                                                    ("final", 4, "ok")}
    # the suite edited with the archive the command trained, not with a DAFNet of its own
    assert not (tmp_path / "cache" / "DAFNet").exists()
