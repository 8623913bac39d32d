"""The method on plain transformers models: no host involved."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin import DAFNetEditor, EditBatch, NetworkConfig, tokenize_edits
from dafnet_plugin.network import DAFNetNetwork, ExactNorm, segment_softmax

from conftest import FACTS

TINY = NetworkConfig(n_layers=2, inner_dim=16, ffn_dim=24, att_dim=8, att_heads=2, gate_dim=4, gate_heads=2)
GPT2_MODULES = ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
LLAMA_MODULES = [f"model.layers.1.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")]


def load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval(), GPT2Tokenizer.from_pretrained(path)


@pytest.fixture(params=["gpt2", "llama"])
def model_case(request, tiny_gpt2_dir, tiny_llama_dir):
    path, modules = (tiny_gpt2_dir, GPT2_MODULES) if request.param == "gpt2" else (tiny_llama_dir, LLAMA_MODULES)
    model, tok = load(path)
    return model, tok, modules


def test_network_shapes():
    net = DAFNetNetwork(6, 10, NetworkConfig(**{**TINY.__dict__, "fusion": "convex"}), n_modes=2).eval()
    x, edit = torch.randn(9, 16), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    update, gamma, vectors = net(x, edit, 3, 1, net.empty_memory())
    # the first edit of a sequence can only attend to itself: its gate is 1, nothing decays
    assert update.shape == (6, 10) and gamma.shape == () and gamma == 0
    assert [v.shape for v in vectors] == [(3, 16), (3, 16)]
    update2, gamma2, _ = net(x, edit, 3, 1, vectors)  # with a memory of three past edits
    assert update2.shape == (6, 10) and not torch.allclose(update, update2) and 0 < gamma2 < 1


def test_exact_norm_matches_the_data_it_saw():
    norm = ExactNorm(4).train()
    data = torch.randn(100, 4) * 3 + 2
    for chunk in data.split(7):
        norm(chunk)
    assert torch.allclose(norm.mean.float(), data.mean(0), atol=1e-5)
    assert torch.allclose(norm.std().float(), data.std(0), atol=1e-5)
    norm.eval()
    before = norm.count.clone()
    norm(torch.randn(5, 4))
    assert norm.count == before  # frozen in evaluation


def test_segment_softmax_sums_to_one_per_edit():
    a = segment_softmax(torch.randn(6), torch.tensor([0, 0, 1, 1, 1, 2]), 3)
    assert torch.allclose(torch.zeros(3).index_add(0, torch.tensor([0, 0, 1, 1, 1, 2]), a), torch.ones(3))


@pytest.mark.parametrize("fusion", ["additive", "convex"])
def test_k_edits_at_once_equal_one_by_one(model_case, fusion):
    model, tok, modules = model_case
    editor = DAFNetEditor(model, modules, NetworkConfig(**{**TINY.__dict__, "fusion": fusion}), init_edit_lr=0.1,
                          precondition=fusion == "additive").eval()
    if fusion == "additive":  # a trained-looking network: strength and yield depend on the edit
        for net in editor.networks.values():
            for head in (net.strength, net.yield_):
                torch.nn.init.normal_(head.weight, std=0.3)
            net.yield_.bias.data.fill_(-1.0)
    batch = tokenize_edits(tok, [p for p, _ in FACTS[:4]], ["London", "Berlin", "euro", "Tokyo"])
    editor.edit(tokenize_edits(tok, [FACTS[5][0]], ["Paris"]))  # a past edit in the memory
    start = editor.snapshot()
    editor.edit(batch)
    at_once = dict(editor.deltas), {n: list(m) for n, m in editor.memory.items()}
    editor.restore(start)
    for i in range(4):
        editor.edit(EditBatch(*(t[i:i + 1] for t in (batch.input_ids, batch.attention_mask, batch.labels))))
    assert editor.n_edits == 5
    for name in modules:
        torch.testing.assert_close(editor.deltas[name], at_once[0][name], atol=1e-5, rtol=1e-4)
        for mine, theirs in zip(editor.memory[name], at_once[1][name]):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_edit_changes_the_edited_prompt_and_reset_restores_exactly(model_case):
    model, tok, modules = model_case
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    editor = DAFNetEditor(model, modules, TINY, init_edit_lr=1.0).eval()
    assert sum(p.numel() for p in model.parameters()) == n_params  # the networks are not in the model
    ids = tok(FACTS[0][0], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
        editor.edit(tokenize_edits(tok, [FACTS[0][0]], ["London"]))
        after = model(ids).logits
        assert (after - before).abs().max() > 1e-3
        with editor.deltas_off():
            torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)
        editor.reset()
        assert all(m.shape[0] == 0 for mem in editor.memory.values() for m in mem)
        assert all(d is None for d in editor.deltas.values())
        torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_merge_folds_delta_into_weights(model_case):
    model, tok, modules = model_case
    editor = DAFNetEditor(model, modules, TINY, init_edit_lr=1.0).eval()
    ids = tok(FACTS[1][0], return_tensors="pt").input_ids
    with torch.no_grad():
        before_edit = editor.snapshot()
        editor.edit(tokenize_edits(tok, [FACTS[1][0]], ["Madrid"]))
        edited = editor.snapshot()
        hooked = model(ids).logits
        editor.merge()
        assert all(d is None for d in editor.deltas.values())
        assert editor.memory[modules[0]][0].shape[0] == 1  # later edits still see this one
        torch.testing.assert_close(model(ids).logits, hooked, atol=1e-4, rtol=1e-4)
        # a snapshot from before the merge would apply ΔW a second time (or leave it in the weights)
        for snap in (edited, before_edit):
            with pytest.raises(RuntimeError, match="before merge"):
                editor.restore(snap)
        torch.testing.assert_close(model(ids).logits, hooked, atol=1e-4, rtol=1e-4)
        merged, merged_logits = editor.snapshot(), model(ids).logits
        editor.edit(tokenize_edits(tok, [FACTS[2][0]], ["Rome"]))
        editor.restore(merged)
        torch.testing.assert_close(model(ids).logits, merged_logits, atol=0, rtol=0)


def test_gate_trains_unless_detached(tiny_gpt2_dir):
    model, tok = load(tiny_gpt2_dir)
    batch = tokenize_edits(tok, [p for p, _ in FACTS[:3]], ["Rome", "Paris", "yen"])
    for detach, expect_grad in ((False, True), (True, False)):
        cfg = NetworkConfig(**{**TINY.__dict__, "detach_gate": detach, "fusion": "convex"})
        editor = DAFNetEditor(model, GPT2_MODULES, cfg, init_edit_lr=1.0)
        editor.edit(batch)
        loss = model(batch.input_ids).logits.square().mean()
        loss.backward()
        gate_grad = editor.networks["32x128"].layers[0].gate.q.weight.grad
        assert (gate_grad is not None and gate_grad.abs().sum() > 0) == expect_grad
        editor.remove()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(tiny_llama_dir, dtype):
    model, tok = load(tiny_llama_dir, dtype)
    editor = DAFNetEditor(model, LLAMA_MODULES, TINY, init_edit_lr=0.05).eval()
    ids = tok(FACTS[2][0], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
        editor.edit(tokenize_edits(tok, [FACTS[2][0]], ["Paris"]))
        after = model(ids).logits
    assert after.dtype == dtype and torch.isfinite(after).all() and not torch.equal(after, before)


def test_unknown_module_and_unsupported_layer_are_errors(tiny_gpt2_dir):
    model, _ = load(tiny_gpt2_dir)
    with pytest.raises(KeyError, match="transformer.h.9.mlp.c_fc"):
        DAFNetEditor(model, ["transformer.h.9.mlp.c_fc"], TINY)
    with pytest.raises(TypeError, match="LayerNorm"):
        DAFNetEditor(model, ["transformer.h.1.ln_1"], TINY)
