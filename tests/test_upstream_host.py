"""Opt-in: DAFNet exported into a copy of a current EasyEdit checkout (EASYEDIT_ROOT), then used the host's
own way in a fresh process that never imports dafnet_plugin (tests/upstream_host_checks.py): BaseEditor
single-turn and sequential, EditTrainer from an archive the plugin trained, and that archive's edit
giving the same logits as the plugin's."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import FACTS, REPO

ROOT = os.environ.get("EASYEDIT_ROOT")
pytestmark = pytest.mark.skipif(not ROOT, reason="set EASYEDIT_ROOT to a current EasyEdit checkout to run")
NEW = ["London", "Berlin", "euro", "Portuguese", "Tokyo", "yen", "Rome", "Madrid"]


def _records() -> list[dict]:
    """CounterFact-form records over the tiny tokenizer's vocabulary."""
    return [{"prompt": p, "target_new": NEW[i], "ground_truth": t, "subject": p.split()[-2],
             "rephrase_prompt": p.replace("The", "So the"), "locality_prompt": FACTS[(i + 1) % len(FACTS)][0],
             "locality_ground_truth": FACTS[(i + 1) % len(FACTS)][1]} for i, (p, t) in enumerate(FACTS)]


def _plugin_archive(model_dir, tok, out) -> str:
    """Two training steps of the plugin's own trainer on the tiny model."""
    from transformers import AutoModelForCausalLM

    from dafnet_plugin import DAFNetTrainingHparams, attach
    from dafnet_plugin.training import DAFNetTrainer

    hp = DAFNetTrainingHparams.from_hparams(str(REPO / "hparams/TRAINING/DAFNet/tiny-gpt2.yaml"))
    hp.model_name, hp.max_iters, hp.lr = str(model_dir), 2, 1e-2
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    records = _records()
    trainer = DAFNetTrainer(attach(model, hp, seed=0), tok, hp, lambda rng, k: rng.sample(records, k), out / "plugin.pt")
    trainer.run()
    return str(out / "plugin.pt")


def _plugin_logits(model_dir, tok, archive) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from dafnet_plugin import DAFNetHyperParams, attach, tokenize_edits

    hp = DAFNetHyperParams.from_hparams(str(REPO / "hparams/DAFNet/tiny-gpt2.yaml"))
    hp.model_name, hp.archive = str(model_dir), archive
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    editor = attach(model, hp)
    with torch.no_grad():
        editor.edit(tokenize_edits(tok, [FACTS[0][0]], [NEW[0]], hp.max_length))
        return model(tok(FACTS[0][0], return_tensors="pt").input_ids).logits[0, -1]


def test_exported_dafnet_runs_in_the_checkout_without_the_plugin(tiny_gpt2_dir, tmp_path):
    from transformers import GPT2Tokenizer

    from dafnet_plugin import upstream

    checkout = tmp_path / "EasyEdit"
    for part in ("easyeditor", "hparams"):
        shutil.copytree(os.path.join(ROOT, part), checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    report = upstream.export(checkout)
    assert report.written and len(report.registrations) == 4
    assert not upstream.export(checkout).changed

    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    tok.pad_token_id = tok.eos_token_id
    archive = _plugin_archive(tiny_gpt2_dir, tok, tmp_path)
    expected = _plugin_logits(tiny_gpt2_dir, tok, archive)

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    edit = yaml.safe_load((REPO / "hparams/DAFNet/tiny-gpt2.yaml").read_text()) | {
        "model_name": str(tiny_gpt2_dir), "device": device}
    train = yaml.safe_load((REPO / "hparams/TRAINING/DAFNet/tiny-gpt2.yaml").read_text()) | {
        "model_name": str(tiny_gpt2_dir), "device": device, "model_class": "GPT2LMHeadModel",
        "tokenizer_class": "GPT2Tokenizer", "archive": archive, "results_dir": str(tmp_path / "results"),
        "max_iters": 4, "batch_size": 2, "val_batch_size": 2, "val_interval": 2, "val_steps": 1, "log_interval": 1}
    files = {"edit_yaml": edit, "archive_yaml": edit | {"archive": archive}, "train_yaml": train}
    spec = {"checkout": str(checkout), "plugin_archive": archive, "train_data": str(tmp_path / "train.json"),
            "facts": [[p, t, NEW[i]] for i, (p, t) in enumerate(FACTS)]}
    for key, content in files.items():
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(content))
        spec[key] = str(tmp_path / f"{key}.yaml")
    (tmp_path / "train.json").write_text(json.dumps(_records()))
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    env = {k: v for k, v in os.environ.items() if k not in ("EASYEDIT_ROOT", "PYTHONPATH")}
    env.setdefault("OMP_NUM_THREADS", "1")
    run = subprocess.run([sys.executable, str(REPO / "tests/upstream_host_checks.py"), str(tmp_path / "spec.json")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    r = json.loads(lines[-1][len("RESULTS "):])

    assert not r["dafnet_plugin_imported"]
    assert os.path.realpath(r["easyeditor_file"]).startswith(os.path.realpath(checkout) + os.sep)
    assert r["alg_dict"] and r["train_dict"] and r["callable_restore"] and r["top_level_exports"], r
    single, seq = r["single"], r["sequential"]
    assert single["n_metrics"] == 3 and single["rewrite_acc"], single
    assert single["n_edits"] == 0 and single["memory_rows"] == [0] and single["logits_equal"], single
    assert single["weights_equal"] and seq["weights_equal"], r
    assert seq["n_edits"] == 3 and seq["memory_rows"] == [3] and not seq["logits_equal"], seq
    assert torch.allclose(torch.tensor(r["archive_logits"]), expected, atol=1e-5)
    assert r["train"]["loaded_archive"] and r["train"]["changed"] and r["train"]["saved"], r["train"]
