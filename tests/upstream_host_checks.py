"""DAFNet as exported into an EasyEdit checkout, used the host's own way; run by tests/test_upstream_host.py
in a fresh process that never imports dafnet_plugin (it is not on sys.path here).

Usage: python upstream_host_checks.py SPEC_JSON. Prints one line, ``RESULTS {json}``, of findings for the test
to assert on; any exception fails the run.

Only the import of the checkout is helped, and only on this stack (transformers 5, no torchvision): the
packages its multimodal and API methods import at module level are stood in for, and three helpers
transformers 5 moved out of ``transformers.modeling_utils`` are put back. Nothing DAFNet, BaseEditor or
EditTrainer run is changed; on the checkout's own requirements none of this is needed.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import types

import torch

spec = json.load(open(sys.argv[1]))
OPTIONAL = ("timm", "torchvision", "av", "qwen_vl_utils", "zhipuai", "rouge", "transformers.modeling_attn_mask_utils")


class _Stand(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stand(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self.__name__} is not installed here")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stand(spec.name)

    def exec_module(self, module):
        pass


def _missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


import transformers.modeling_utils as modeling_utils  # noqa: E402
import transformers.pytorch_utils as pytorch_utils  # noqa: E402

for helper in ("apply_chunking_to_forward", "prune_linear_layer", "find_pruneable_heads_and_indices"):
    if not hasattr(modeling_utils, helper):
        setattr(modeling_utils, helper, getattr(pytorch_utils, helper, _Stand(helper)))
for probe in ("datasets", "sentence_transformers", "peft"):  # they probe for the optional packages
    importlib.import_module(probe)
sys.meta_path.insert(0, _Finder({n for n in OPTIONAL if _missing(n)}))
sys.path.insert(0, spec["checkout"])

import easyeditor  # noqa: E402
from easyeditor import BaseEditor, CounterFactDataset, EditTrainer  # noqa: E402
from easyeditor.editors.utils import CALLABLE_RESTORE_ALGS  # noqa: E402
from easyeditor.models.dafnet import DAFNetHyperParams, DAFNetTrainingHparams, attached  # noqa: E402
from easyeditor.util.alg_dict import ALG_DICT  # noqa: E402
from easyeditor.util.alg_train_dict import ALG_TRAIN_DICT  # noqa: E402

torch.manual_seed(0)
out = {"easyeditor_file": easyeditor.__file__, "alg_dict": "DAFNet" in ALG_DICT,
       "train_dict": "DAFNET" in ALG_TRAIN_DICT, "callable_restore": "DAFNet" in CALLABLE_RESTORE_ALGS,
       "top_level_exports": all(hasattr(easyeditor, n) for n in ("DAFNetHyperParams", "DAFNetTrainingHparams"))}
FACTS = spec["facts"]  # [prompt, true answer, new target]
REQUESTS = dict(prompts=[f[0] for f in FACTS[:3]], ground_truth=[f[1] for f in FACTS[:3]],
                target_new=[f[2] for f in FACTS[:3]],
                rephrase_prompts=[f[0].replace("The", "So the") for f in FACTS[:3]],
                locality_inputs={"neighborhood": {"prompt": [FACTS[3][0]] * 3, "ground_truth": [FACTS[3][1]] * 3}})


def edit(sequential: bool) -> dict:
    editor = BaseEditor.from_hparams(DAFNetHyperParams.from_hparams(spec["edit_yaml"]))
    ids = editor.tok(FACTS[0][0], return_tensors="pt").input_ids
    weights = {k: v.clone() for k, v in editor.model.state_dict().items()}
    with torch.no_grad():
        before = editor.model(ids).logits
    metrics, model, _ = editor.edit(**REQUESTS, sequential_edit=sequential)
    state = attached(model)
    with torch.no_grad():
        after = model(ids).logits
    return {"n_metrics": len(metrics), "rewrite_acc": "rewrite_acc" in metrics[0]["post"],
            "n_edits": state.n_edits, "memory_rows": sorted({m.shape[0] for mem in state.memory.values() for m in mem}),
            "weights_equal": all(torch.equal(v, weights[k]) for k, v in model.state_dict().items()),
            "logits_equal": torch.equal(before, after)}


out["single"] = edit(sequential=False)
out["sequential"] = edit(sequential=True)

# the plugin's archive, through the host's BaseEditor: one edit, the logits after it
hp = DAFNetHyperParams.from_hparams(spec["archive_yaml"])
editor = BaseEditor.from_hparams(hp)
edited, _ = editor.apply_algo(editor.model, editor.tok, [{"prompt": FACTS[0][0], "target_new": FACTS[0][2]}], hp)
ids = editor.tok(FACTS[0][0], return_tensors="pt").input_ids
with torch.no_grad():
    out["archive_logits"] = edited(ids).logits[0, -1].tolist()

# EditTrainer: a few steps from the plugin's archive, with the host's own loop and datasets
config = DAFNetTrainingHparams.from_hparams(spec["train_yaml"])
trainer = EditTrainer(config=config, train_set=CounterFactDataset(spec["train_data"], config=config),
                      val_set=CounterFactDataset(spec["train_data"], config=config))
loaded = {k: v.clone() for k, v in trainer.model.state_dict().items()}
trainer.run()
trained = trainer.model.state_dict()
out["train"] = {"loaded_archive": all(torch.equal(loaded[k], v) for k, v in torch.load(
                    spec["plugin_archive"], weights_only=True)["model"].items()),
                "changed": sorted(k for k in trained if not torch.equal(trained[k], loaded[k]))[:3],
                "saved": os.path.exists(trainer.save_path)}
out["dafnet_plugin_imported"] = any(m == "dafnet_plugin" or m.startswith("dafnet_plugin.") for m in sys.modules)
print("RESULTS " + json.dumps(out))
