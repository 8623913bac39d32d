"""ROME and MEMIT through the host's own BaseEditor on the tiny GPT-2, with second-moment statistics
computed locally (benchmarks/methods/locate_edit.py): nothing is downloaded."""
from __future__ import annotations

import importlib
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import dafnet_plugin  # noqa: F401  imports the host
from conftest import FACTS

ee = pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
from benchmarks.methods import locate_edit  # noqa: E402

N_SAMPLES = 100
# Stronger than the host's GPT-2 XL tuning, so that a random two-layer model moves its argmax.
TINY_OVERRIDES = dict(v_num_grad_steps=40, clamp_norm_factor=10, v_weight_decay=0.001, kl_factor=0.0)


def corpus(n: int = N_SAMPLES) -> list[str]:
    """Varied word sequences, so that the statistics have full rank (repeating a few facts would not)."""
    rng = random.Random(0)
    words = " ".join(f"{p} {t}" for p, t in FACTS).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 20))) for _ in range(n)]


@pytest.fixture
def no_download(monkeypatch):
    layer_stats = importlib.import_module("easyeditor.models.rome.layer_stats")

    def refuse(*args, **kwargs):
        raise AssertionError("the host tried to download its statistics corpus")
    monkeypatch.setattr(layer_stats, "load_dataset", refuse)
    return layer_stats


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    path = str(tiny_gpt2_dir)  # the host names the statistics after this exact string
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_layout_names_the_modules_the_host_looks_up():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    tied = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=24, num_attention_heads=2,
                                        vocab_size=50, tie_word_embeddings=True))
    untied = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=24,
                                          num_attention_heads=2, vocab_size=50, tie_word_embeddings=False))
    layouts = [locate_edit.model_layout(m) for m in (gpt2, tied, untied)]
    assert [(l["rewrite_module_tmp"], l["lm_head_module"], l["n_layers"], l["mlp_width"]) for l in layouts] == [
        ("transformer.h.{}.mlp.c_proj", "transformer.wte", 3, 64),
        ("model.layers.{}.mlp.down_proj", "model.embed_tokens", 2, 24),
        ("model.layers.{}.mlp.down_proj", "lm_head", 2, 24)]
    nethook = importlib.import_module("easyeditor.util.nethook")
    for model, layout in zip((gpt2, tied, untied), layouts):
        nethook.get_parameter(model, layout["lm_head_module"] + ".weight")  # what MEMIT's compute_z looks up
        nethook.get_module(model, layout["ln_f_module"])


def test_depth_scaling_reproduces_the_host_yamls():
    assert locate_edit.rewrite_layers({"family": "gpt2", "n_layers": 48}) == {"ROME": [17], "MEMIT": [13, 14, 15, 16, 17]}
    assert locate_edit.rewrite_layers({"family": "llama", "n_layers": 32}) == {"ROME": [5], "MEMIT": [4, 5, 6, 7, 8]}
    assert locate_edit.rewrite_layers({"family": "llama", "n_layers": 2}) == {"ROME": [0], "MEMIT": [0]}


def test_second_moments_are_what_the_host_loads(tiny, tmp_path, no_download):
    path, model, tok = tiny
    layer = "transformer.h.0.mlp.c_proj"
    [file] = locate_edit.compute_second_moments(model, tok, corpus(), [layer], tmp_path, n_samples=N_SAMPLES)
    assert file == locate_edit.stats_file(model, layer, tmp_path, N_SAMPLES)
    mtime = file.stat().st_mtime_ns
    locate_edit.compute_second_moments(model, tok, corpus(), [layer], tmp_path, n_samples=N_SAMPLES)
    assert file.stat().st_mtime_ns == mtime  # cached

    stat = no_download.layer_stats(model, tok, layer, tmp_path, locate_edit.LOCAL_CORPUS, ["mom2"],
                                   sample_size=N_SAMPLES, precision="float32", hparams=None)
    keys = []
    hook = model.get_submodule(layer).register_forward_pre_hook(lambda m, args: keys.append(args[0][0]))
    with torch.no_grad():
        for text in corpus():
            model(**tok(text, return_tensors="pt"))
    hook.remove()
    k = torch.cat(keys).double()
    assert stat.mom2.count == len(k)
    torch.testing.assert_close(stat.mom2.moment().double(), k.T @ k / len(k), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alg", ["ROME", "MEMIT"])
def test_edit_through_base_editor_and_restore(alg, tiny, tmp_path, no_download):
    path, model, tok = tiny
    layout = locate_edit.model_layout(model)
    if alg == "ROME":
        hparams = locate_edit.rome_hparams(path, layout, tmp_path, N_SAMPLES, mom2_adjustment=True)
    else:
        hparams = locate_edit.memit_hparams(path, layout, tmp_path, N_SAMPLES, mom2_update_weight=10, **TINY_OVERRIDES)
    layers = [hparams.rewrite_module_tmp.format(layer) for layer in hparams.layers]
    locate_edit.compute_second_moments(model, tok, corpus(), layers, tmp_path, n_samples=N_SAMPLES)

    torch.manual_seed(0)  # the host samples its context templates
    editor = ee.BaseEditor.from_hparams(hparams)
    weights = {k: v.clone() for k, v in editor.model.state_dict().items()}
    # The subject is the whole prompt, so the edited token is the last one: on a random two-layer model
    # little of a mid-prompt subject reaches the prediction (and MEMIT refuses fact_token "last").
    prompt = FACTS[0][0]
    metrics, edited, _ = editor.edit(prompts=[prompt], target_new=["Berlin"], ground_truth=[FACTS[0][1]],
                                     subject=[prompt], keep_original_weight=True)
    assert metrics[0]["post"]["rewrite_acc"][0] > metrics[0]["pre"]["rewrite_acc"][0]
    for name, value in edited.state_dict().items():
        assert torch.equal(value, weights[name]), name


@pytest.mark.parametrize("alg", ["ROME", "MEMIT"])
def test_the_suites_rome_and_memit_get_their_fixes(alg, tiny, tmp_path, monkeypatch):
    """The transformers-5 / bf16 fixes come with the suite's hparams, not with ``import dafnet_plugin``
    (test_host checks that side in a fresh interpreter)."""
    rome_main = importlib.import_module("easyeditor.models.rome.rome_main")
    compute_z = importlib.import_module("easyeditor.models.memit.compute_z")
    # as the host wrote them, whatever earlier tests in this process asked for; restored afterwards
    monkeypatch.setattr(rome_main, "compute_v", importlib.import_module("easyeditor.models.rome.compute_v").compute_v)
    monkeypatch.setattr(compute_z, "nethook", importlib.import_module("easyeditor.util.nethook"))
    path, model, _ = tiny
    build = locate_edit.rome_hparams if alg == "ROME" else locate_edit.memit_hparams
    build(path, locate_edit.model_layout(model), tmp_path, N_SAMPLES)
    assert getattr(rome_main.compute_v, "casts_to_left", False)
    assert getattr(compute_z.nethook, "layer_outputs_as_tuples", False)


def test_statistics_read_a_zsre_training_file(tiny, tmp_path, no_download):
    """smollm2-zsre trains on MEND's ZsRE form (src, alt, rephrase, loc): the statistics' text is
    read from it as from CounterFact records (it once failed with KeyError 'prompt')."""
    import json

    from benchmarks.methods.context import Context
    from dafnet_plugin.data.builtin import make_edits, to_zsre

    path, model, tok = tiny
    train = tmp_path / "zsre.json"
    train.write_text(json.dumps(to_zsre(make_edits(split="train"))[:30]))
    hparams = locate_edit.prepare("ROME", Context(path, "", [str(train)], tmp_path / "cache"))
    layer = hparams.rewrite_module_tmp.format(hparams.layers[0])
    stats = locate_edit.stats_file(model, layer, hparams.stats_dir, hparams.mom2_n_samples, hparams.mom2_dataset,
                                   hparams.mom2_dtype)
    assert stats.exists() and hparams.mom2_n_samples == 30
