"""Opt-in: the checks of test_host.py against a current EasyEdit checkout named by EASYEDIT_ROOT.

They run in a subprocess (tests/current_host_checks.py), since the pytest process may already hold
another easyeditor (importing dafnet_plugin registers with whichever it finds first).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, tiny_rome_config

ROOT = os.environ.get("EASYEDIT_ROOT")
pytestmark = pytest.mark.skipif(not ROOT, reason="set EASYEDIT_ROOT to a current EasyEdit checkout to run")


def test_dafnet_and_rome_through_current_base_editor(tiny_gpt2_dir, tmp_path):
    assert os.path.isdir(os.path.join(ROOT, "easyeditor")), f"EASYEDIT_ROOT={ROOT} holds no easyeditor/"
    dafnet = yaml.safe_load((REPO / "hparams/DAFNet/tiny-gpt2.yaml").read_text())
    dafnet["model_name"] = str(tiny_gpt2_dir)  # device stays 0, as in the shipped YAML
    rome = tiny_rome_config(tiny_gpt2_dir, tmp_path / "stats")
    for name, hp in (("dafnet", dafnet), ("rome", rome)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(hp))
    env = {**os.environ, "EASYEDIT_ROOT": ROOT,
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only contend (ROME 37 s -> 2 s on a busy box)
    run = subprocess.run([sys.executable, str(REPO / "tests/current_host_checks.py"), str(tmp_path / "dafnet.yaml"),
                          str(tmp_path / "rome.yaml")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    r = json.loads(lines[-1][len("RESULTS "):])

    # (1) registered into the checkout's registries
    assert os.path.realpath(r["easyeditor_file"]).startswith(os.path.realpath(ROOT) + os.sep), r["easyeditor_file"]
    assert r["alg_dict"] and r["callable_restore"]
    assert r.get("train_dict", True)  # absent until the host registers the trainer
    # (2) single-turn: the host's callable restore gives back the original model
    single = r["single"]
    assert single["n_metrics"] == 3 and single["rewrite_acc"], single
    assert single["weights_equal"] and single["n_edits"] == 0 and single["memory_rows"] == [0], single
    assert single["logits_equal"] and single["model_device"] == "cpu", single
    # (3) sequential: the edits accumulate
    seq = r["sequential"]
    assert seq["n_edits"] == 3 and seq["memory_rows"] == [3] and not seq["logits_equal"], seq
    # (4) ROME through the same, patched BaseEditor: edits, then is restored
    rome_r = r["rome"]
    assert rome_r["changed_during_edit"] and rome_r["restored"], rome_r
    assert rome_r["post"] > rome_r["pre"], rome_r
