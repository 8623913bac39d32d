"""The checks of tests/test_host.py against a current EasyEdit checkout, run by
tests/test_current_host.py in a fresh process (EASYEDIT_ROOT set, no 2023 easyeditor imported).

Usage: python current_host_checks.py DAFNET_YAML ROME_YAML. Prints one line, ``RESULTS {json}``,
of findings for the test to assert on; any exception fails the run.
"""
import json
import os
import sys

import torch

import dafnet_plugin
from dafnet_plugin import DAFNetHyperParams, attached, host

ee = dafnet_plugin.easyeditor
dafnet_yaml, rome_yaml = sys.argv[1:3]
FACTS = [("The capital of France is", "Paris"), ("The capital of Italy is", "Rome"),
         ("The capital of Spain is", "Madrid"), ("The official language of Brazil is", "Portuguese")]
PROMPTS, TRUTHS = [p for p, _ in FACTS[:3]], [t for _, t in FACTS[:3]]
TARGETS = ["London", "Berlin", "euro"]
out = {"easyeditor_file": ee.__file__}

# (1) registration
from easyeditor.editors.utils import CALLABLE_RESTORE_ALGS  # noqa: E402
from easyeditor.util.alg_dict import ALG_DICT  # noqa: E402

out["alg_dict"] = ALG_DICT.get("DAFNet") is host.apply_dafnet_to_model
out["callable_restore"] = "DAFNet" in CALLABLE_RESTORE_ALGS
if hasattr(host, "_register_trainer"):
    from easyeditor.util.alg_train_dict import ALG_TRAIN_DICT
    out["train_dict"] = "DAFNet" in ALG_TRAIN_DICT


# (2), (3) DAFNet through BaseEditor, single-turn and sequential
def dafnet(sequential: bool) -> dict:
    editor = ee.BaseEditor.from_hparams(DAFNetHyperParams.from_hparams(dafnet_yaml))
    weights = {k: v.clone() for k, v in editor.model.state_dict().items()}
    ids = editor.tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = editor.model(ids).logits
    metrics, model, _ = editor.edit(
        prompts=PROMPTS, target_new=TARGETS, ground_truth=TRUTHS,
        rephrase_prompts=[p.replace("The", "So the") for p in PROMPTS],
        locality_inputs={"neighborhood": {"prompt": [FACTS[3][0]] * 3, "ground_truth": [FACTS[3][1]] * 3}},
        sequential_edit=sequential)
    state = attached(model)
    with torch.no_grad():
        after = model(ids).logits
    return {"n_metrics": len(metrics), "rewrite_acc": "rewrite_acc" in metrics[0]["post"],
            "weights_equal": all(torch.equal(v, weights[k]) for k, v in model.state_dict().items()),
            "n_edits": state.n_edits, "memory_rows": sorted({m.shape[0] for mem in state.memory.values() for m in mem}),
            "logits_equal": torch.equal(after, logits), "model_device": str(next(model.parameters()).device),
            "editor_device": str(editor.device)}


out["single"] = dafnet(sequential=False)
out["sequential"] = dafnet(sequential=True)

# (4) ROME through the same, patched BaseEditor
editor = ee.BaseEditor.from_hparams(ee.ROMEHyperParams.from_hparams(rome_yaml))
name = "transformer.h.0.mlp.c_proj.weight"
original = editor.model.get_parameter(name).detach().clone()
during = {}
apply_rome = editor.apply_algo


def watched(model, *args, **kwargs):
    edited, weights_copy = apply_rome(model, *args, **kwargs)
    during["changed"] = not torch.equal(edited.get_parameter(name), original)
    return edited, weights_copy


editor.apply_algo = watched
metrics, _, _ = editor.edit(prompts=[FACTS[0][0]], target_new=["London"], ground_truth=["Paris"], subject=["France"])
out["rome"] = {"changed_during_edit": during.get("changed"),
               "restored": torch.equal(editor.model.get_parameter(name), original),
               "pre": metrics[0]["pre"]["rewrite_acc"][0], "post": metrics[0]["post"]["rewrite_acc"][0],
               "model_device": str(next(editor.model.parameters()).device)}
print("RESULTS " + json.dumps(out))
