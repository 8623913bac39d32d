"""DAFNet through the installed EasyEdit's own BaseEditor (the 2023 release unless EASYEDIT_ROOT
points elsewhere), and the host's other methods still working beside it."""
from __future__ import annotations

import inspect

import pytest
import torch
import yaml

import dafnet_plugin
from dafnet_plugin import attached, host

from conftest import FACTS, REPO, tiny_rome_config

ee = pytest.importorskip("easyeditor", reason="EasyEdit is not installed")

PROMPTS = [p for p, _ in FACTS[:3]]
TARGETS = ["London", "Berlin", "euro"]


def edit(editor, sequential: bool):
    """One call that means the same on both host generations."""
    kwargs = dict(prompts=PROMPTS, target_new=TARGETS, ground_truth=[t for _, t in FACTS[:3]],
                  rephrase_prompts=[p.replace("The", "So the") for p in PROMPTS],
                  locality_inputs={"neighborhood": {"prompt": [FACTS[4][0]] * 3, "ground_truth": [FACTS[4][1]] * 3}})
    if "sequential_edit" in inspect.signature(editor.edit).parameters:
        return editor.edit(**kwargs, sequential_edit=sequential)
    return editor.edit(**kwargs, keep_original_weight=not sequential)


def test_registration_is_idempotent_and_keeps_other_methods():
    from easyeditor.util.alg_dict import ALG_DICT

    before = dict(ALG_DICT)
    assert host.register() is ee and host.register() is ee
    assert ALG_DICT["DAFNet"] is host.apply_dafnet_to_model
    assert {k: v for k, v in ALG_DICT.items() if k != "DAFNet"} == {k: v for k, v in before.items() if k != "DAFNet"}
    assert dafnet_plugin.easyeditor is ee


def test_single_turn_restores_the_original_model(tiny_hparams):
    editor = ee.BaseEditor.from_hparams(tiny_hparams)
    weights = {k: v.clone() for k, v in editor.model.state_dict().items()}
    ids = editor.tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = editor.model(ids).logits
    metrics, model, _ = edit(editor, sequential=False)
    assert len(metrics) == 3 and "rewrite_acc" in metrics[0]["post"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    state = attached(model)
    assert state.n_edits == 0 and all(m.shape[0] == 0 for mem in state.memory.values() for m in mem)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def test_sequential_edits_accumulate(tiny_hparams):
    editor = ee.BaseEditor.from_hparams(tiny_hparams)
    ids = editor.tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = editor.model(ids).logits
    _, model, _ = edit(editor, sequential=True)
    state = attached(model)
    assert state.n_edits == 3
    assert all(m.shape[0] == 3 for mem in state.memory.values() for m in mem)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, logits)  # the edits stay in the model
        state.reset()
        assert torch.equal(model(ids).logits, logits)


def test_rome_still_runs_through_the_same_base_editor(tiny_gpt2_dir, tmp_path):
    rome = tiny_rome_config(tiny_gpt2_dir, tmp_path / "stats")
    (tmp_path / "rome.yaml").write_text(yaml.safe_dump(rome))
    hparams = ee.ROMEHyperParams.from_hparams(str(tmp_path / "rome.yaml"))
    editor = ee.BaseEditor.from_hparams(hparams)
    kwargs = dict(prompts=[FACTS[0][0]], target_new=["London"], ground_truth=["Paris"], subject=["France"])
    metrics, _, _ = editor.edit(**kwargs)
    assert metrics[0]["post"]["rewrite_acc"][0] > metrics[0]["pre"]["rewrite_acc"][0]


HOST_METHODS_UNTOUCHED = """
import json, sys
import dafnet_plugin
from dafnet_plugin import host
host.register()
rome_main = sys.modules["easyeditor.models.rome.rome_main"]
compute_z = sys.modules["easyeditor.models.memit.compute_z"]
as_defined = lambda: {
    "compute_v": rome_main.compute_v is sys.modules["easyeditor.models.rome.compute_v"].compute_v,
    "nethook": compute_z.nethook is sys.modules["easyeditor.util.nethook"]}
out = {"registered": as_defined()}
host.fix_rome_and_memit()
host.fix_rome_and_memit()
out["fixed"] = as_defined()
out["fix_marks"] = [getattr(rome_main.compute_v, "casts_to_left", False),
                    getattr(compute_z.nethook, "layer_outputs_as_tuples", False),
                    compute_z.nethook.TraceDict.__module__ == "dafnet_plugin.host"]
print("RESULT " + json.dumps(out))
"""


def test_registration_leaves_rome_and_memit_as_the_host_wrote_them():
    """``import dafnet_plugin`` and ``register`` leave ROME's ``compute_v`` and MEMIT's ``compute_z``
    alone; the transformers-5 fixes come only with ``fix_rome_and_memit`` (which the suite calls).
    In a fresh interpreter: other tests in this process may have asked for the fixes."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", HOST_METHODS_UNTOUCHED], capture_output=True, text=True,
                         cwd=str(REPO), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert out["registered"] == {"compute_v": True, "nethook": True}
    assert out["fixed"] == {"compute_v": False, "nethook": False}
    assert out["fix_marks"] == [True, True, True]
