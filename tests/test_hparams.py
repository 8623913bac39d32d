"""Strict hyperparameters: every YAML we ship loads; every mistake names its key and file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dafnet_plugin import DAFNetHyperParams, DAFNetTrainingHparams, attach

from conftest import REPO

TINY_YAML = (REPO / "hparams/DAFNet/tiny-gpt2.yaml").read_text()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["gpt2-xl", "gpt-j-6B", "llama-7b", "tiny-gpt2"])
def test_shipped_yamls_load(name):
    hp = DAFNetHyperParams.from_hparams(str(REPO / f"hparams/DAFNet/{name}.yaml"))
    assert hp.alg_name == "DAFNet" and hp.inner_params and hp.network_config().n_layers == 2


def test_smollm2_yaml_is_strictly_valid():
    # loading it would fetch the built-in model; the key check alone needs no model
    from dafnet_plugin.hparams import load_strict

    hp = load_strict(DAFNetHyperParams, str(REPO / "hparams/DAFNet/smollm2-135m.yaml"))
    assert hp.model_name == "smollm2-135m" and len(hp.inner_params) == 4
    assert hp.fusion == "additive" and hp.precondition
    training = load_strict(DAFNetTrainingHparams, str(REPO / "hparams/TRAINING/DAFNet/smollm2-135m.yaml"))
    # an archive trained with one YAML must load with the other: the method's keys agree
    for key in ("inner_params", "n_layers", "inner_dim", "ffn_dim", "att_dim", "att_heads", "fusion", "precondition"):
        assert getattr(training, key) == getattr(hp, key), key


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "learning_rate: 1.0\n", "key 'learning_rate'"),
    (lambda t: t.replace("n_layers: 2", "n_layers: two"), "key 'n_layers'"),
    (lambda t: t.replace("detach_gate: false", "detach_gate: maybe"), "key 'detach_gate'"),
    (lambda t: t.replace("ffn_dim: 48\n", ""), "missing key(s): ffn_dim"),
    (lambda t: t.replace("alg_name: DAFNet", "alg_name: MEND"), "key 'alg_name'"),
    (lambda t: t + "rows: subjects\n", "key 'rows'"),
])
def test_bad_yaml_names_key_and_file(tmp_path, edit, message):
    path = write(tmp_path, edit(TINY_YAML))
    with pytest.raises(ValueError) as error:
        DAFNetHyperParams.from_hparams(path)
    assert message in str(error.value) and path in str(error.value)


def test_missing_file_and_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        DAFNetHyperParams.from_hparams(str(tmp_path / "nowhere.yaml"))
    path = write(tmp_path, TINY_YAML.replace("model_name: tiny-gpt2", "model_name: ./no/such/model"))
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        DAFNetHyperParams.from_hparams(path)


def test_archive_of_another_shape_is_a_clear_error(tmp_path, tiny_hparams):
    model = AutoModelForCausalLM.from_pretrained(tiny_hparams.model_name)
    editor = attach(model, tiny_hparams)
    state = editor.state_dict()
    torch.save(state, tmp_path / "good.pt")
    tiny_hparams.archive = str(tmp_path / "good.pt")
    assert torch.equal(attach(model, tiny_hparams).edit_lrs, editor.edit_lrs)
    key = next(k for k in state if k.endswith("token_mlp.0.weight"))
    state[key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    tiny_hparams.archive = str(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"bad.pt.*{key}"):
        attach(model, tiny_hparams)
