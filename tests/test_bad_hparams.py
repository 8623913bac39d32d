"""Hyperparameter values out of range and archives that are not DAFNet's stop when the YAML is read,
in one line naming the file and the key; an empty archive path is said on stderr, once."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dafnet_plugin import DAFNetHyperParams, DAFNetTrainingHparams
from dafnet_plugin.archives import check_archive

from conftest import REPO

TINY_YAML = (REPO / "hparams/DAFNet/tiny-gpt2.yaml").read_text()
TINY_TRAINING_YAML = (REPO / "hparams/TRAINING/DAFNet/tiny-gpt2.yaml").read_text()


def with_value(text: str, key: str, value: str) -> str:
    """``text`` with ``key: value`` in place of the key's line, or added at the end."""
    lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
    return "\n".join(lines + [f"{key}: {value}"]) + "\n"


def refused(tmp_path: Path, text: str, cls=DAFNetHyperParams) -> str:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        cls.from_hparams(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "weights_only" not in message
    return message


@pytest.mark.parametrize("key,value,expected", [
    ("n_layers", "0", "at least 1"), ("inner_dim", "-1", "at least 1"), ("ffn_dim", "0", "at least 1"),
    ("att_dim", "0", "at least 1"), ("att_heads", "0", "at least 1"), ("gate_dim", "-4", "at least 1"),
    ("gate_heads", "0", "at least 1"), ("memory_limit", "-1", "0 or more"), ("init_edit_lr", "0", "above 0"),
    ("init_edit_lr", "-0.01", "above 0"), ("edit_scale", "0", "above 0"), ("protect_keys", "-0.1", "0 or more"),
    ("max_length", "4", "at least 8 (tokens of prompt and target together)"),
])
def test_a_value_out_of_range_names_file_and_key(tmp_path, key, value, expected):
    assert f"key '{key}' must be {expected}, not {value}" in refused(tmp_path, with_value(TINY_YAML, key, value))


@pytest.mark.parametrize("key,value,expected", [
    ("lr", "0", "above 0"), ("max_iters", "0", "at least 1"), ("max_sequence", "0", "at least 1"),
    ("cloc", "-0.2", "0 or more"), ("loss_ema", "1.5", "above 0 and at most 1"), ("grad_clip", "0", "above 0"),
    ("model_save_pt", "0", "at least 1"), ("dev_every", "-1", "0 or more"),
])
def test_a_training_value_out_of_range_names_file_and_key(tmp_path, key, value, expected):
    message = refused(tmp_path, with_value(TINY_TRAINING_YAML, key, value), DAFNetTrainingHparams)
    assert f"key '{key}' must be {expected}, not {value}" in message


def test_no_inner_params_is_named(tmp_path):
    text = TINY_YAML.replace("  - transformer.h.1.mlp.c_fc.weight\n  - transformer.h.1.mlp.c_proj.weight\n", "")
    assert "key 'inner_params' must name at least one weight" in refused(tmp_path, with_value(text, "inner_params", "[]"))


def damaged_archives(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not DAFNet archives, each with what its message must say."""
    good = folder / "good.pt"
    torch.save({"model": {"edit_lrs": torch.ones(2), "net.weight": torch.zeros(2, 2)}}, good)
    files = {"random": (b"\x93\x07" + bytes(range(256)) * 4, "not an archive torch.save wrote"),
             "truncated": (good.read_bytes()[:-40], "not an archive torch.save wrote"),
             "pickle": (pickle.dumps({"edit_lrs": [1.0]}), "not an archive torch.save wrote")}
    out = {}
    for name, (content, expected) in files.items():
        (folder / f"{name}.pt").write_bytes(content)
        out[name] = (folder / f"{name}.pt", expected)
    saved = {"tensor": (torch.ones(3, 4), "a bare tensor of shape (3, 4)"),
             "empty": ({}, "an empty dict"),
             "numbers": ({"model": {"edit_lrs": 1.0}}, "a dict with values other than tensors"),
             "other-method": ({"model": {"mlp.weight": torch.ones(2)}}, "without DAFNet's 'edit_lrs'")}
    for name, (content, expected) in saved.items():
        torch.save(content, folder / f"{name}.pt")
        out[name] = (folder / f"{name}.pt", expected)
    return out


@pytest.mark.parametrize("kind", ["random", "truncated", "pickle", "tensor", "empty", "numbers", "other-method"])
def test_an_archive_that_is_not_dafnets_is_one_line_naming_it(tmp_path, kind):
    archive, expected = damaged_archives(tmp_path)[kind]
    message = refused(tmp_path, with_value(TINY_YAML, "archive", str(archive)))
    assert f"key 'archive': {archive}" in message and expected in message


def test_a_missing_archive_names_key_and_file(tmp_path):
    message = refused(tmp_path, with_value(TINY_YAML, "archive", str(tmp_path / "nowhere.pt")))
    assert f"key 'archive': no archive at {tmp_path / 'nowhere.pt'}" in message


def test_an_archive_the_plugin_writes_passes(tmp_path, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    from dafnet_plugin import attach

    hp = DAFNetHyperParams.from_hparams(str(REPO / "hparams/DAFNet/tiny-gpt2.yaml"))
    hp.model_name = str(tiny_gpt2_dir)
    editor = attach(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), hp)
    torch.save({"model": editor.state_dict()}, tmp_path / "trained.pt")  # the training checkpoint layout
    torch.save(editor.state_dict(), tmp_path / "weights.pt")
    for name in ("trained.pt", "weights.pt"):
        path = tmp_path / "h.yaml"
        path.write_text(with_value(TINY_YAML, "archive", str(tmp_path / name)))
        assert DAFNetHyperParams.from_hparams(str(path)).archive == str(tmp_path / name)
    check_archive(str(tmp_path / "trained.pt"), "here")


def test_an_empty_archive_path_is_said_once(tmp_path, capsys):
    path = tmp_path / "h.yaml"
    path.write_text(with_value(TINY_YAML, "archive", "''"))
    for _ in range(2):
        assert DAFNetHyperParams.from_hparams(str(path)).archive == ""
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {path}: key 'archive' is empty: edits use an untrained DAFNet network "
                   f"(give a trained archive, or null to say so)"]
    path.write_text(TINY_YAML)  # null: the documented "no archive yet", no warning
    DAFNetHyperParams.from_hparams(str(path))
    assert capsys.readouterr().err == ""


def test_a_hub_model_name_offline_and_not_cached_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refused(tmp_path, with_value(TINY_YAML, "model_name", "someone/no-such-model"))
    assert "key 'model_name': 'someone/no-such-model' is neither a local folder nor reachable offline" in message


def test_a_hub_model_name_the_cache_holds_passes_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # the layout huggingface_hub downloads into: a ref naming a snapshot that holds the files
    repo = tmp_path / "hub" / "models--someone--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "h.yaml"
    path.write_text(with_value(TINY_YAML, "model_name", "someone/cached-model"))
    assert DAFNetHyperParams.from_hparams(str(path)).model_name == "someone/cached-model"
