"""A DAFNet archive checked when the hparams naming it are read, so that a wrong file is one line
naming it, before a model is loaded, instead of torch's unpickling traceback (whose advice to pass
``weights_only=False`` is wrong for a file that is no archive at all)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

# Every archive the plugin writes holds the per-module edit learning rates under this key.
SIGNATURE_KEY = "edit_lrs"
EXPECTED = "DAFNet weights (a dict of tensors, or a training checkpoint holding them under 'model')"


def check_archive(path: str, where: str) -> None:
    """Raise one line, starting with ``where`` (the file and key that name the archive), unless
    ``path`` is a file torch.save wrote holding DAFNet weights. Tensors are memory-mapped, not read."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no archive at {path}")
    # torch.save writes a zip; random bytes and a file cut short (its directory is at the end) are none
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where}: {path} is not an archive torch.save wrote (random bytes, or cut short); "
                         f"expected {EXPECTED}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{where}: {path} holds Python objects besides tensors; expected {EXPECTED}") from None
    except RuntimeError as error:
        raise ValueError(f"{where}: {path} is damaged ({str(error).splitlines()[0][:120]}); "
                         f"expected {EXPECTED}") from None
    weights = state.get("model", state) if isinstance(state, dict) else state
    if not (isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise ValueError(f"{where}: {path} holds {_describe(weights)}; expected {EXPECTED}")
    if SIGNATURE_KEY not in weights:
        raise ValueError(f"{where}: {path} holds tensors without DAFNet's '{SIGNATURE_KEY}' (another method's "
                         f"archive?); expected {EXPECTED}")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a bare tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict) and not value:
        return "an empty dict"
    if isinstance(value, dict):
        return "a dict with values other than tensors"
    return f"a {type(value).__name__}"
