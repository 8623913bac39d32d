"""DAFNet hyperparameters as EasyEdit expects them: one YAML per model, read strictly.

An unknown key, a missing key or a value of the wrong type is an error that names the key and
the file: a typo in a YAML must never silently fall back to a default.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional, Type, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .archives import check_archive
from .default_model import resolve_model
from .editor import ROWS
from .network import FUSIONS, NetworkConfig

CURRICULA = ("stall", "uniform")
# Legal ranges of numeric keys, (keys, test, what the test asks for); a key a class lacks is skipped.
# Each bound is where the value stops meaning anything: a network of no layers, a memory of -1 edits.
RANGES = [
    (("n_layers", "inner_dim", "ffn_dim", "att_dim", "att_heads", "gate_dim", "gate_heads", "max_iters",
      "max_sequence", "curriculum_patience", "curriculum_min_step", "trunk_pool", "score_edits", "model_save_pt",
      "batch_size", "val_batch_size", "accumulate_bs"), lambda v: v >= 1, "at least 1"),
    (("memory_limit", "protect_keys", "lr_lr", "cedit", "crephrase", "cloc", "curriculum_growth",
      "curriculum_max_wait", "precondition_damping", "dev_every"), lambda v: v >= 0, "0 or more"),
    (("init_edit_lr", "edit_scale", "lr", "grad_clip"), lambda v: v > 0, "above 0"),
    (("loss_ema",), lambda v: 0 < v <= 1, "above 0 and at most 1"),
    (("max_length",), lambda v: v >= 8, "at least 8 (tokens of prompt and target together)"),
]

T = TypeVar("T")


def load_strict(cls: Type[T], path: str) -> T:
    """Read ``path`` into the dataclass ``cls`` through omegaconf's structured (typed) config."""
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"hyperparameter file not found: {path}") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(cls), loaded)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ValueError(f"{path}: key '{key}': {e.msg if hasattr(e, 'msg') else e}".splitlines()[0]) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{path}: missing key(s): {', '.join(missing)}")
    return OmegaConf.to_object(cfg)


@dataclass
class _DAFNetMethod:
    """What the method itself reads, in both the editing and the training YAML."""
    model_name: str = MISSING          # a local folder, a hub name, or "smollm2-135m" (built-in default)
    device: int = MISSING              # CUDA index, as in EasyEdit; the CPU is used when there is no GPU
    inner_params: List[str] = MISSING  # edited weights, as EasyEdit names them for MEND ("<module>.weight")
    n_layers: int = MISSING
    inner_dim: int = MISSING
    ffn_dim: int = MISSING
    att_dim: int = MISSING
    att_heads: int = MISSING
    gate_dim: int = MISSING
    gate_heads: int = MISSING
    init_edit_lr: float = MISSING
    detach_gate: bool = False          # True: the authors' gate that never trains
    memory_limit: int = 0              # past edit vectors kept per layer and module; 0 keeps all
    fusion: str = "additive"           # "convex": the authors' rule (edit t of T acts at ~1/t)
    precondition: bool = False         # True: updates act through the inverse second moment of inputs
    protect_keys: float = 0.0          # > 0: each edit's keys join the preconditioner of later edits
    edit_scale: float = 1.0            # every update times this, at editing time (as MEND's lr_scale)
    rows: str = "all"                  # token rows that feed the network and carry the update (editor.ROWS)
    archive: Optional[str] = None      # trained DAFNet weights; None edits with an untrained network
    max_length: int = 40
    model_parallel: bool = False

    NAME_KEY: ClassVar[str]            # the key that must say "DAFNet"

    @classmethod
    def from_hparams(cls, path: str):
        if not path.endswith((".yaml", ".yml")):
            path += ".yaml"
        hp = load_strict(cls, path)
        value = getattr(hp, cls.NAME_KEY)
        if value.upper() != "DAFNET":
            raise ValueError(f"{path}: key '{cls.NAME_KEY}' must be 'DAFNet', not '{value}'")
        choices = {"fusion": FUSIONS, "curriculum": CURRICULA, "rows": ROWS}
        for key, allowed in choices.items():
            if hasattr(hp, key) and getattr(hp, key) not in allowed:
                raise ValueError(f"{path}: key '{key}' must be one of {', '.join(allowed)}, not '{getattr(hp, key)}'")
        for keys, within, expected in RANGES:
            for key in keys:
                if hasattr(hp, key) and not within(getattr(hp, key)):
                    raise ValueError(f"{path}: key '{key}' must be {expected}, not {getattr(hp, key)}")
        if not hp.inner_params:
            raise ValueError(f"{path}: key 'inner_params' must name at least one weight to edit")
        if hp.archive:
            check_archive(hp.archive, f"{path}: key 'archive'")
        try:
            hp.model_name = resolve_model(hp.model_name)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path}: key 'model_name': {error}") from None
        return hp

    def network_config(self) -> NetworkConfig:
        return NetworkConfig(n_layers=self.n_layers, inner_dim=self.inner_dim, ffn_dim=self.ffn_dim,
                             att_dim=self.att_dim, att_heads=self.att_heads, gate_dim=self.gate_dim,
                             gate_heads=self.gate_heads, detach_gate=self.detach_gate, fusion=self.fusion)


_WARNED_EMPTY_ARCHIVE: set[str] = set()  # files already warned about, so each is named once a process


@dataclass
class DAFNetHyperParams(_DAFNetMethod):
    """Everything ``BaseEditor`` and the DAFNet apply function read."""
    alg_name: str = MISSING            # must be "DAFNet"
    NAME_KEY: ClassVar[str] = "alg_name"

    @classmethod
    def from_hparams(cls, path: str) -> "DAFNetHyperParams":
        hp = super().from_hparams(path)
        # null is the documented "no archive yet"; an empty string is more likely a path that went missing
        if hp.archive == "" and path not in _WARNED_EMPTY_ARCHIVE:
            _WARNED_EMPTY_ARCHIVE.add(path)
            print(f"warning: {path}: key 'archive' is empty: edits use an untrained DAFNet network "
                  f"(give a trained archive, or null to say so)", file=sys.stderr)
        return hp


@dataclass
class DAFNetTrainingHparams(_DAFNetMethod):
    """Meta-training: the recipe (authors' defaults in the comments) and the keys EasyEdit's
    ``EditTrainer`` reads, under the host's names where it has one."""
    alg: str = MISSING                 # must be "DAFNet"; the trainer looks up alg.upper()
    results_dir: str = MISSING         # checkpoints go to <results_dir>/models/DAFNet/<model>
    lr: float = 1e-6                   # Adam, the networks
    lr_lr: float = 1e-4                # Adam, the per-module edit learning rates
    cedit: float = 0.1                 # NLL of the edit targets after the sequence
    crephrase: float = 0.1             # NLL of the targets after the rephrased prompts
    cloc: float = 0.2                  # KL(unedited || edited) on the locality prompts
    grad_clip: float = 100.0
    max_iters: int = MISSING           # training sequences
    max_sequence: int = 1000           # curriculum cap on the sequence length k
    curriculum_patience: int = 3000    # steps without a new best smoothed loss before k grows
    curriculum_growth: float = 0.25    # k_max grows by max(growth * k_max, curriculum_min_step)
    curriculum_min_step: int = 10
    curriculum_max_wait: int = 0       # > 0: k also grows at the latest this many steps after it last grew
    curriculum: str = "stall"          # "stall": the authors' growing k_max; "uniform": k in 1..max_sequence from step 1
    # The cached trunk: the layers below the first edited one never change while DAFNet trains, so
    # their outputs for trunk_pool training records (edit, rephrase and locality prompts) and the
    # unedited gradient signals are computed once and cached; each step runs only the edited layers
    # and the head. False: every step runs the whole model (the authors' way).
    trunk_cache: bool = False
    trunk_pool: int = 4000             # records cached (shared between the training sources by size)
    cache_dtype: str = "bfloat16"      # storage of cached hidden states and signals
    score_edits: int = 64              # edits of a sequence whose prompts are scored each step (cached trunk)
    precondition_damping: float = 0.1  # see DAFNetEditor.estimate_preconditioners
    loss_ema: float = 0.01             # smoothing of the loss the curriculum watches
    model_save_pt: int = 500           # steps between checkpoints
    dev_every: int = 100               # steps between dev-split scores in the training log (0: none)
    dev_edits: int = 20                # dev records edited as one sequence for those scores
    seed: int = 0
    # read by EditTrainer's constructor; DAFNet draws its own sequences, so batch sizes stay 1
    model_class: str = "AutoModelForCausalLM"
    tokenizer_class: str = "AutoTokenizer"
    tokenizer_name: Optional[str] = None   # None: the model's own
    batch_size: int = 1
    val_batch_size: int = 1
    opt: str = "Adam"
    train_base: bool = False
    eval_only: bool = False
    debug: bool = False
    save: bool = True
    silent: bool = False
    final_eval: bool = False
    log_interval: int = 100
    val_interval: int = 1000000
    val_steps: int = 0
    early_stop_patience: int = 1000000
    early_stop_key: str = "loss/total_edit_val"
    accumulate_bs: int = 1
    max_epochs: Optional[int] = None
    half: bool = False
    dropout: float = 0.0
    no_grad_layers: Optional[int] = None

    NAME_KEY: ClassVar[str] = "alg"

    @classmethod
    def from_hparams(cls, path: str) -> "DAFNetTrainingHparams":
        hp = super().from_hparams(path)
        hp.tokenizer_name = hp.tokenizer_name or hp.model_name
        return hp
