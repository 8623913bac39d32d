"""DAFNet hyperparameters as EasyEdit expects them: one YAML per model, read strictly.

An unknown key, a missing key or a value of the wrong type is an error that names the key and
the file: a typo in a YAML must never silently fall back to a default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Type, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .default_model import resolve_model
from .network import NetworkConfig

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
class DAFNetHyperParams:
    """Everything ``BaseEditor`` and the DAFNet apply function read."""
    alg_name: str = MISSING            # must be "DAFNet"
    model_name: str = MISSING          # a local folder, a hub name, or "smollm2-135m" (built-in default)
    device: int = MISSING              # CUDA index, as in EasyEdit; the CPU is used when there is no GPU
    inner_params: List[str] = MISSING  # edited modules, EasyEdit's name for them (MEND's too)
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
    archive: Optional[str] = None      # trained DAFNet weights; None edits with an untrained network
    max_length: int = 40
    model_parallel: bool = False

    @classmethod
    def from_hparams(cls, path: str) -> "DAFNetHyperParams":
        if not path.endswith((".yaml", ".yml")):
            path += ".yaml"
        hp = load_strict(cls, path)
        if hp.alg_name != "DAFNet":
            raise ValueError(f"{path}: key 'alg_name' must be 'DAFNet', not '{hp.alg_name}'")
        hp.model_name = resolve_model(hp.model_name)
        return hp

    def network_config(self) -> NetworkConfig:
        return NetworkConfig(n_layers=self.n_layers, inner_dim=self.inner_dim, ffn_dim=self.ffn_dim,
                             att_dim=self.att_dim, att_heads=self.att_heads, gate_dim=self.gate_dim,
                             gate_heads=self.gate_heads, detach_gate=self.detach_gate)
