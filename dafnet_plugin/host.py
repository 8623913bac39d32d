"""The adapter to EasyEdit, the only module that knows the host's quirks.

It imports EasyEdit (the 2023 release on the package index, or a current checkout named by
``EASYEDIT_ROOT`` or already on ``sys.path``) with the fewest named fixes this stack needs, and
registers DAFNet: the apply function in ``ALG_DICT``, the trainable editor in ``ALG_TRAIN_DICT``,
and restore for both host generations. Fixes to other methods of the host are applied only when
asked for (``fix_rome_and_memit``, which the comparison suite calls).
"""
from __future__ import annotations

import copy as copy_module
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .editor import SUBJECT_ROWS, DAFNetEditor, attach, edit_subjects, tokenize_edits
from .hparams import DAFNetHyperParams

LOG = logging.getLogger(__name__)
ALG_NAME = "DAFNet"

# Imported by EasyEdit only for its multimodal editors and API-backed methods (and, in a current
# checkout, by UnKE from a module transformers 5 removed); without them the text editors work, so
# they are stood in for while EasyEdit imports, never afterwards.
OPTIONAL_MODULES = ("timm", "torchvision", "av", "qwen_vl_utils", "zhipuai", "transformers.modeling_attn_mask_utils")
# Model families the host's BaseEditor recognises by substring of the model name.
HOST_MODEL_FAMILIES = ("t5", "gpt", "llama", "baichuan", "chatglm", "internlm", "qwen", "mistral")


# ----- importing the host ----------------------------------------------------------------------
def _restore_moved_transformers_helpers() -> None:
    """transformers 5 moved two helpers out of ``modeling_utils`` and dropped a third; the host
    imports all three from there."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    if not hasattr(modeling_utils, "find_pruneable_heads_and_indices"):
        modeling_utils.find_pruneable_heads_and_indices = find_pruneable_heads_and_indices


def find_pruneable_heads_and_indices(heads: list[int], n_heads: int, head_size: int,
                                     already_pruned_heads: set[int]) -> tuple[set[int], torch.LongTensor]:
    """Heads still to prune (renumbered past already pruned ones) and the indices of the weight
    rows to keep; the contract of the helper transformers 5 removed."""
    heads = set(heads) - already_pruned_heads
    mask = torch.ones(n_heads, head_size)
    for head in heads:
        mask[head - sum(1 for h in already_pruned_heads if h < head)] = 0
    return heads, torch.arange(mask.numel())[mask.view(-1).eq(1)].long()


class _AbsentModule(types.ModuleType):
    """Stands in for an optional package: any use of it raises ImportError naming it."""

    def __getattr__(self, name: str) -> "_AbsentModule":
        if name.startswith("__"):
            raise AttributeError(name)
        return _AbsentModule(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ImportError(f"{self.__name__.split('.')[0]} is not installed; EasyEdit needs it only "
                          f"for its multimodal or API-backed methods")


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _AbsentModule(spec.name)

    def exec_module(self, module) -> None:
        pass


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def import_easyeditor() -> types.ModuleType | None:
    """EasyEdit's package, or None when it is not installed. ``EASYEDIT_ROOT`` (a checkout holding
    ``easyeditor/``) takes precedence over the installed release."""
    root = os.environ.get("EASYEDIT_ROOT")
    if root:
        if not os.path.isdir(os.path.join(root, "easyeditor")):
            raise FileNotFoundError(f"EASYEDIT_ROOT={root} holds no easyeditor/ package")
        if root not in sys.path:
            sys.path.insert(0, root)
    if "easyeditor" in sys.modules:
        return sys.modules["easyeditor"]
    if importlib.util.find_spec("easyeditor") is None:
        return None
    _restore_moved_transformers_helpers()
    # Libraries that probe for the optional packages at import time must see the truth, so they
    # are imported before the stand-ins exist.
    for probe in ("datasets", "sentence_transformers", "peft"):
        if importlib.util.find_spec(probe) is not None:
            importlib.import_module(probe)
    absent = {n for n in OPTIONAL_MODULES if not _importable(n)}
    finder = _AbsentFinder(absent)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module("easyeditor")
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if isinstance(sys.modules[m], _AbsentModule)]:
            del sys.modules[name]


# ----- running the host on a CPU ---------------------------------------------------------------
def _cpu_if_cuda(device: Any) -> Any:
    if isinstance(device, (str, torch.device)) and str(device).startswith("cuda"):
        return "cpu"
    return device


def _redirect(fn: Callable, index_is_device: bool) -> Callable:
    """``fn`` with CUDA devices replaced by the CPU. For ``.to`` a bare int is a device index;
    for the tensor factories an int is a size, so only their ``device=`` is looked at."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        if index_is_device:
            args = [("cpu" if isinstance(a, int) and not isinstance(a, bool) else _cpu_if_cuda(a)) for a in args]
        return fn(*args, **kwargs)
    return call


_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "eye",
              "linspace")


@contextmanager
def cuda_strings_on_cpu(factories: bool = True) -> Iterator[None]:
    """The 2023 host writes ``f"cuda:{hparams.device}"`` throughout; without a GPU, send those
    to the CPU. Active only around host calls: never while a model loads (``factories=False``),
    since transformers builds its buffers with these factories then."""
    if torch.cuda.is_available() or getattr(cuda_strings_on_cpu, "active", False):
        yield
        return
    from transformers import BatchEncoding

    targets = [(torch.Tensor, "to"), (torch.nn.Module, "to"), (BatchEncoding, "to")]
    if factories:
        targets += [(torch, name) for name in _FACTORIES]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    saved += [(owner, "cuda", getattr(owner, "cuda")) for owner in (torch.Tensor, torch.nn.Module)]
    cuda_strings_on_cpu.active = True
    try:
        for owner, name, fn in saved[:len(targets)]:
            setattr(owner, name, _redirect(fn, index_is_device=name == "to"))
        for owner in (torch.Tensor, torch.nn.Module):
            setattr(owner, "cuda", lambda self, *a, **k: self)
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        cuda_strings_on_cpu.active = False


def _run_on_cpu(method: Callable, factories: bool = True) -> Callable:
    @functools.wraps(method)
    def call(*args, **kwargs):
        with cuda_strings_on_cpu(factories):
            return method(*args, **kwargs)
    call.__dafnet_wrapped__ = True
    return call


def _loading_any_model(init: Callable) -> Callable:
    """The host picks model and tokenizer classes by substrings of the model name and refuses any
    other name (SmolLM2, for one). Such a model is loaded with the Auto classes and handed to the
    host as the ``(model, tokenizer)`` pair it also accepts."""
    @functools.wraps(init)
    def call(self, hparams, *args, **kwargs):
        name = hparams.model_name
        if not isinstance(name, str) or any(f in name.lower() for f in HOST_MODEL_FAMILIES):
            return init(self, hparams, *args, **kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(name)
        tok = AutoTokenizer.from_pretrained(name)
        tok.pad_token_id = tok.eos_token_id
        if hparams.alg_name not in ("ROME", "MEMIT"):
            tok.padding_side = "left"  # as the host does for decoder-only models
        hparams.model_name = (model, tok)
        try:
            init(self, hparams, *args, **kwargs)
        finally:
            hparams.model_name = name
        self.model_name = name  # the host's evaluation reads the name as a string
    call.__dafnet_wrapped__ = True
    return call


# ----- DAFNet as a host method -----------------------------------------------------------------
class UndoEdit(dict):
    """What DAFNet's apply returns as ``weights_copy`` when the host will restore.

    DAFNet's edit lives beside the weights (ΔW and the memory of past edits), so copying weights
    back cannot undo it. The current host calls ``weights_copy()`` for the methods in
    ``CALLABLE_RESTORE_ALGS``; the 2023 host iterates ``weights_copy.items()``. Either gives back
    the state from before this edit; as a mapping it is empty, so no weight is written.
    """

    def __init__(self, editor: DAFNetEditor, state: dict) -> None:
        super().__init__()
        self._undo = functools.partial(editor.restore, state)

    def __call__(self) -> None:
        self._undo()

    def items(self):
        self._undo()
        return super().items()


def apply_dafnet_to_model(model, tok, requests: list[dict], hparams: DAFNetHyperParams, copy: bool = False,
                          return_orig_weights: bool = False, keep_original_weight: bool = False,
                          **kwargs) -> tuple[Any, dict]:
    """EasyEdit's apply contract. Each call adds its requests, in order, to the model's running
    edit sequence; whether the host then restores decides single-turn versus sequential."""
    if copy:
        model = copy_module.deepcopy(model)
    editor = attach(model, hparams)
    before = editor.snapshot()
    needed = ("prompt", "target_new", "subject") if hparams.rows in SUBJECT_ROWS else ("prompt", "target_new")
    for i, request in enumerate(requests):
        for key in needed:
            if not request.get(key):
                raise ValueError(f"DAFNet request {i} has no '{key}' (rows: {hparams.rows}): {request}")
    batch = tokenize_edits(tok, [r["prompt"] for r in requests], [r["target_new"] for r in requests],
                           hparams.max_length, edit_subjects(requests, hparams.rows))
    with torch.no_grad():
        editor.edit(batch)
    if keep_original_weight or _HOST_RESTORES_BY_CALL:
        return model, UndoEdit(editor, before)
    return model, {}


_HOST_RESTORES_BY_CALL = False


def register(ee: types.ModuleType | None = None) -> types.ModuleType | None:
    """Make ``alg_name: DAFNet`` work in the host. Idempotent; returns the host package."""
    global _HOST_RESTORES_BY_CALL
    ee = ee or import_easyeditor()
    if ee is None:
        return None
    from easyeditor.util import alg_dict

    alg_dict.ALG_DICT[ALG_NAME] = apply_dafnet_to_model
    try:
        from easyeditor.editors import utils as editor_utils
        editor_utils.CALLABLE_RESTORE_ALGS.add(ALG_NAME)
        _HOST_RESTORES_BY_CALL = True
    except (ImportError, AttributeError):
        _HOST_RESTORES_BY_CALL = False  # the 2023 host: restores through weights_copy.items()
    _register_trainer()
    _patch_base_editor(ee)
    return ee


# ----- fixes for the host's ROME and MEMIT, only for those who ask ------------------------------
def fix_rome_and_memit() -> None:
    """Make the host's ROME and MEMIT run on transformers 5 and on bf16/fp16 models: MEMIT's
    ``compute_z`` reads decoder-layer outputs as tuples, ROME's right vector takes its left one's
    dtype. ``register`` does not call this (registering DAFNet leaves the other methods as the host
    wrote them); the comparison suite does, where it prepares ROME and MEMIT. Idempotent."""
    import_easyeditor()
    _memit_layer_outputs_as_tuples()
    _rome_right_vector_in_weight_dtype()


def _rome_right_vector_in_weight_dtype() -> None:
    """The 2023 ROME's right vector comes out in fp32 (its target adds an fp32 delta) and its left one
    in the model's dtype; their outer product fails on a bf16 or fp16 model. Here the right vector
    takes the left one's dtype (a no-op in fp32). Idempotent."""
    rome_main = importlib.import_module("easyeditor.models.rome.rome_main")  # by module name, as for MEMIT below
    if getattr(rome_main.compute_v, "casts_to_left", False):
        return
    compute_v = rome_main.compute_v

    def cast(model, tok, request, hparams, layer, left_vector, *rest):
        return compute_v(model, tok, request, hparams, layer, left_vector, *rest).to(left_vector.dtype)
    cast.casts_to_left = True
    rome_main.compute_v = cast


def _memit_layer_outputs_as_tuples() -> None:
    """The 2023 MEMIT's ``compute_z`` indexes a decoder layer's output as a tuple: ``cur_out[0][i, idx, :]
    += delta`` in its ``edit_output_fn`` and ``tr[loss_layer].output[0]`` for the loss. Under transformers 5
    the layer returns the hidden-state tensor itself, so ``[0]`` takes the first sequence and the edit
    raises IndexError. Here ``compute_z`` (only it) gets a ``TraceDict`` that shows a tensor output as a
    1-tuple to its edit function and, once the traced block has run (``compute_z`` reads it after the
    block), as its retained output. Tuple outputs (transformers 4) pass through unchanged. Idempotent."""
    from easyeditor.util import nethook

    # by module name: a star import in the host binds ``easyeditor.models`` to another module
    compute_z = importlib.import_module("easyeditor.models.memit.compute_z")

    if getattr(compute_z.nethook, "layer_outputs_as_tuples", False):
        return

    class TraceDict(nethook.TraceDict):
        def __init__(self, module, layers=None, edit_output=None, **kwargs):
            edit = edit_output

            def as_tuple(output, layer):
                return edit((output,), layer)[0] if isinstance(output, torch.Tensor) else edit(output, layer)

            super().__init__(module, layers, edit_output=as_tuple if edit else None, **kwargs)

        def __exit__(self, *exc):
            for trace in self.values():
                if isinstance(getattr(trace, "output", None), torch.Tensor):
                    trace.output = (trace.output,)
            return super().__exit__(*exc)

    compute_z.nethook = types.SimpleNamespace(**{**vars(nethook), "TraceDict": TraceDict,
                                                 "layer_outputs_as_tuples": True})


def _register_trainer() -> None:
    from easyeditor.util import alg_train_dict

    from .trainable import DAFNetTrainable
    for key in (ALG_NAME, ALG_NAME.upper()):  # the trainer looks up config.alg.upper()
        alg_train_dict.ALG_TRAIN_DICT[key] = DAFNetTrainable


def _training_sequences(run: Callable) -> Callable:
    """``EditTrainer.run`` for DAFNet: the host's loop draws fixed-size batches and scores edit
    and locality only; DAFNet trains on whole sequences whose length follows a curriculum, with
    a rephrase loss too. The host's datasets, model and config are used as they are."""
    @functools.wraps(run)
    def call(self, *args, **kwargs):
        if str(getattr(self.config, "alg", "")).upper() != ALG_NAME.upper():
            return run(self, *args, **kwargs)
        from .data.dafset import MixtureDataset
        from .training import DAFNetTrainer

        train_set = self.train_set if isinstance(self.train_set, MixtureDataset) else MixtureDataset({"train": self.train_set})
        name = str(self.config.model_name).rstrip("/").split("/")[-1]
        checkpoint = os.path.join(self.config.results_dir, "models", ALG_NAME, f"{name}.pt")
        tok = getattr(self.train_set, "tok", None)
        if tok is None:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(self.config.tokenizer_name or self.config.model_name)
        cache = None
        if self.config.trunk_cache:
            from .training import trunk_cache_for
            # trunk_cache_for reads only the pooled records of each source
            cache = trunk_cache_for(self.model.editor, tok, train_set.sources, self.config)
        # the trainer's validation records are what the training log scores every dev_every steps
        val_set = getattr(self, "val_set", None) or []
        dev = [val_set[i] for i in range(min(len(val_set), self.config.dev_edits))]
        trainer = DAFNetTrainer(self.model.editor, tok, self.config,
                                lambda rng, k: train_set.sample_sequence(rng, k)[1], checkpoint, cache, dev)
        self.dafnet_trainer = trainer
        return trainer.run()
    call.__dafnet_wrapped__ = True
    return call


def _patch_base_editor(ee: types.ModuleType) -> None:
    from easyeditor.editors.editor import BaseEditor

    if getattr(BaseEditor.__init__, "__dafnet_wrapped__", False):
        return
    BaseEditor.__init__ = _loading_any_model(_run_on_cpu(BaseEditor.__init__, factories=False))
    for name in ("edit", "batch_edit", "edit_dataset", "edit_requests", "normal_edit"):
        if hasattr(BaseEditor, name):
            setattr(BaseEditor, name, _run_on_cpu(getattr(BaseEditor, name)))
    try:
        from easyeditor.trainer.EditTrainer import EditTrainer
        EditTrainer.__init__ = _run_on_cpu(EditTrainer.__init__, factories=False)
        EditTrainer.run = _run_on_cpu(_training_sequences(EditTrainer.run))
    except ImportError:
        pass
