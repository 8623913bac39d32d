"""Fusion of the edits of a sequence, the preconditioner, and the cached trunk."""
from __future__ import annotations

import random
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin import DAFNetEditor, NetworkConfig, tokenize_edits
from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.editor import SUBJECT_ROWS
from dafnet_plugin.network import DAFNetNetwork
from dafnet_plugin.training import sequence_losses
from dafnet_plugin.trunk import Trunk, build_trunk_cache, cached_sequence_losses, second_moments

TINY = NetworkConfig(n_layers=2, inner_dim=16, ffn_dim=24, att_dim=8, att_heads=2, gate_dim=4, gate_heads=2)
GPT2_MODULES = ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
LLAMA_MODULES = [f"model.layers.1.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")]
RECORDS = to_counterfact(make_edits(12, split="train"))


def write_weights(fusion: str, T: int) -> list[float]:
    """The weight edit t (1..T) gets in the update of the call that writes it, each edit written
    in its own call after the t - 1 before it (the evaluation protocols' way)."""
    torch.manual_seed(0)
    net = DAFNetNetwork(6, 10, NetworkConfig(**{**TINY.__dict__, "fusion": fusion}), n_modes=1).eval()
    memory, weights = net.empty_memory(), []
    for _ in range(T):
        x = torch.randn(3, 16)
        with torch.no_grad():
            update, _, vectors = net(x, torch.zeros(3, dtype=torch.long), 1, 0, memory)
            # the update is x_inᵀ (w / 3) x_out after the layers: recover w from one with weight 1
            net_x = _layers_output(net, x, memory)
            unit = net_x[:, :6].T @ (net_x[:, 6:] / 3)
        weights.append((update.flatten() @ unit.flatten() / unit.flatten().square().sum()).item())
        memory = [torch.cat([m, v]) for m, v in zip(memory, vectors)]
    return weights


def _layers_output(net: DAFNetNetwork, x: torch.Tensor, memory) -> torch.Tensor:
    x = net.norm(x)
    for layer, past in zip(net.layers, memory):
        x, *_ = layer(x, torch.zeros(len(x), dtype=torch.long), 1, 0, past)
    return x


def test_additive_fusion_writes_every_edit_at_full_strength_whatever_its_position():
    weights = write_weights("additive", 30)
    assert weights == pytest.approx([1.0] * 30, abs=1e-4)


def test_convex_fusion_writes_edit_t_at_one_over_t():
    weights = write_weights("convex", 30)
    assert [w * t for t, w in enumerate(weights, 1)] == pytest.approx([1.0] * 30, abs=0.05)


def test_additive_earlier_edits_are_kept_when_untrained():
    net = DAFNetNetwork(6, 10, TINY, n_modes=1).eval()
    x = torch.randn(8, 16)
    _, gamma, _ = net(x, torch.arange(8) // 2, 4, 0, net.empty_memory())
    assert 0.999 < gamma.item() <= 1.0


def test_earlier_keys_without_a_preconditioner_are_an_error_not_ignored():
    net = DAFNetNetwork(6, 10, TINY, n_modes=1).eval()
    x, edit = torch.randn(4, 16), torch.arange(4) // 2
    earlier = (torch.randn(2, 6), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="precondition"):
        net(x, edit, 2, 0, net.empty_memory(), None, earlier)
    update, _, _ = net(x, edit, 2, 0, net.empty_memory(), torch.eye(6), earlier)
    plain, _, _ = net(x, edit, 2, 0, net.empty_memory(), torch.eye(6))
    assert not torch.allclose(update, plain)  # edit 1 loses edit 0's key rows


def test_preconditioner_is_the_damped_inverse_second_moment(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    editor = DAFNetEditor(model, GPT2_MODULES, TINY, precondition=True)
    a = torch.randn(32, 32)
    c = a @ a.T / 32
    editor.estimate_preconditioners({GPT2_MODULES[0]: c, GPT2_MODULES[1]: torch.eye(128)}, damping=0.1)
    inverse = editor.preconditioners["0"].inverse
    expected = c / c.diagonal().mean() + 0.1 * torch.eye(32)
    torch.testing.assert_close(inverse @ expected, torch.eye(32), atol=1e-3, rtol=0)
    assert "preconditioners.0.inverse" in editor.state_dict()  # archives carry it


@pytest.mark.parametrize("arch, rows", [("gpt2", "all"), ("llama", "all"), ("llama", "subject_last")])
def test_cached_trunk_losses_equal_the_full_model_path(arch, rows, tiny_gpt2_dir, tiny_llama_dir):
    path, modules = (tiny_gpt2_dir, GPT2_MODULES) if arch == "gpt2" else (tiny_llama_dir, LLAMA_MODULES)
    if rows == "subject_last":  # the first layer, whose output at the subject reaches the target by attention
        modules = [m.replace("layers.1.", "layers.0.") for m in modules]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = GPT2Tokenizer.from_pretrained(path)
    editor = DAFNetEditor(model, modules, TINY, init_edit_lr=1.0, precondition=True, rows=rows).eval()  # norm frozen
    cache = build_trunk_cache(editor, tok, {"a": RECORDS[:7], "b": RECORDS[7:]}, 40, torch.float32, batch_size=5)
    assert len(cache) == 12 and cache.sources == {"a": [0, 7], "b": [7, 12]}
    editor.estimate_preconditioners(second_moments(editor, cache), 0.1)
    sequence = [8, 7, 11, 9]
    full = sequence_losses(editor, tok, [RECORDS[i] for i in sequence], 40)
    cached = cached_sequence_losses(editor, Trunk(editor), cache, sequence, sequence)
    assert_same_losses(cached, full)
    # and gradients flow into the network from the cached path
    cached["edit"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in editor.networks.parameters())
    # draws stay inside one source
    rng = random.Random(0)
    for _ in range(20):
        drawn = cache.draw(rng, 3)
        assert all(i < 7 for i in drawn) or all(i >= 7 for i in drawn)


LOSS_TOLERANCE = 1e-4  # float32 sums in another order


def assert_same_losses(cached: dict, full: dict) -> None:
    for name in ("edit", "rephrase", "loc"):
        assert full[name].item() > 0 or name == "loc"
        torch.testing.assert_close(cached[name], full[name], atol=LOSS_TOLERANCE, rtol=LOSS_TOLERANCE)


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether assert_same_losses would tell ``a`` from ``b``."""
    return not torch.allclose(a, b, atol=LOSS_TOLERANCE, rtol=LOSS_TOLERANCE)


def losses_of_all_edits_scored_on_some(editor: DAFNetEditor, tok, records: list, scored: list) -> dict:
    """training.sequence_losses on the full model with the edits of all ``records`` but the prompts of
    ``scored`` only (edit, rephrase and locality): what cached_sequence_losses computes for a scored
    subset. sequence_losses edits with what it scores, so its edit call is given the whole sequence."""
    subjects = [r["subject"] for r in records] if editor.rows in SUBJECT_ROWS else None
    whole = tokenize_edits(tok, [r["prompt"] for r in records], [r["target_new"] for r in records], 40, subjects)
    edit = editor.edit
    with mock.patch.object(editor, "edit", lambda _scored_only, **options: edit(whole, **options)):
        return sequence_losses(editor, tok, scored, 40)


def test_cached_trunk_losses_with_a_scored_subset_and_protected_keys_equal_the_full_model_path(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    torch.manual_seed(0)  # the networks' initialisation, whatever ran before
    editor = DAFNetEditor(model, GPT2_MODULES, TINY, init_edit_lr=1.0, precondition=True, protect_keys=1.0).eval()
    cache = build_trunk_cache(editor, tok, {"a": RECORDS}, 40, torch.float32, batch_size=5)
    editor.estimate_preconditioners(second_moments(editor, cache), 0.1)
    sequence, scored = [8, 7, 11, 9], [11, 8]  # the scored edits are the sequence's third and first
    full = losses_of_all_edits_scored_on_some(editor, tok, [RECORDS[i] for i in sequence],
                                              [RECORDS[i] for i in scored])
    assert_same_losses(cached_sequence_losses(editor, Trunk(editor), cache, sequence, scored), full)
    # what the comparison rests on: the unscored edits change the scored losses, and so do protected keys
    alone = sequence_losses(editor, tok, [RECORDS[i] for i in scored], 40)
    assert differ(alone["edit"], full["edit"])
    editor.protect_keys = 0.0
    unprotected = cached_sequence_losses(editor, Trunk(editor), cache, sequence, scored)
    assert differ(unprotected["edit"], full["edit"])


def test_short_cached_training_makes_a_sequence_of_20_edits_hold(tiny_facts_model, tmp_path):
    from dafnet_plugin import attach
    from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for
    from conftest import final_accuracy, short_training_hparams

    _, path = tiny_facts_model
    hp = short_training_hparams(path)
    hp.cache_dtype = "float32"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = GPT2Tokenizer.from_pretrained(path)
    editor = attach(model, hp, seed=0)
    held_out = to_counterfact(make_edits(20, split="val"))
    cache = trunk_cache_for(editor, tok, {"train": to_counterfact(make_edits(400, split="train"))}, hp, tmp_path)
    before = final_accuracy(editor, tok, held_out)
    DAFNetTrainer(editor, tok, hp, None, tmp_path / "ck.pt", cache).run(STEPS)
    after = final_accuracy(editor, tok, held_out)
    # the tiny facts model comes out of a short CPU training that differs slightly between CPUs: 60 steps
    # of DAFNet reached +0.2 on one machine and +0.17 on another, 150 steps +0.25 on the slower one
    assert after > before + 0.2, (before, after)


STEPS = 150


def test_protected_keys_keep_a_later_update_off_an_earlier_edits_keys(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    first, later = (tokenize_edits(tok, [r["prompt"]], [r["target_new"]]) for r in RECORDS[:2])
    name = GPT2_MODULES[1]

    def later_update_on_first_keys(protect: float) -> float:
        torch.manual_seed(0)
        editor = DAFNetEditor(model, GPT2_MODULES, TINY, init_edit_lr=1.0, protect_keys=protect).eval()
        keys = editor.gradient_signals(first)[name][0][:, :128]
        editor.edit(first)
        before = editor.deltas[name]
        editor.edit(later)
        update = editor.deltas[name] - before  # the untrained network keeps the earlier edit (γ ≈ 1)
        editor.remove()
        return ((keys @ update).norm() / (keys.norm() * update.norm())).item()

    assert later_update_on_first_keys(1.0) < 0.1 * later_update_on_first_keys(0.0)


def test_protected_keys_k_edits_at_once_equal_one_by_one(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    editor = DAFNetEditor(model, GPT2_MODULES, TINY, init_edit_lr=0.1, precondition=True, protect_keys=0.5).eval()
    batch = tokenize_edits(tok, [r["prompt"] for r in RECORDS[:3]], [r["target_new"] for r in RECORDS[:3]])
    editor.edit(batch)
    at_once = dict(editor.deltas)
    editor.reset()
    for i in range(3):
        editor.edit(tokenize_edits(tok, [RECORDS[i]["prompt"]], [RECORDS[i]["target_new"]]))
    for name in GPT2_MODULES:
        torch.testing.assert_close(editor.deltas[name], at_once[name], atol=1e-5, rtol=1e-4)


def test_edit_scale_multiplies_every_update(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    batch = tokenize_edits(tok, [r["prompt"] for r in RECORDS[:2]], [r["target_new"] for r in RECORDS[:2]])
    deltas = {}
    for scale in (1.0, 0.5):
        torch.manual_seed(0)
        editor = DAFNetEditor(model, GPT2_MODULES, TINY, init_edit_lr=0.1, edit_scale=scale).eval()
        editor.edit(batch)
        deltas[scale] = dict(editor.deltas)
        editor.remove()
    for name in GPT2_MODULES:
        torch.testing.assert_close(deltas[0.5][name], 0.5 * deltas[1.0][name])
