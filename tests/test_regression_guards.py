"""Behaviour the suite's figures rest on, each asserted so that the test fails when it breaks (issue 24's
list): the final protocol scores after the last edit, memory_limit caps the memory, a restore to a
snapshot that holds edits is bitwise, an archive loads the networks' weights."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin import DAFNetEditor, NetworkConfig, tokenize_edits

from conftest import FACTS

TINY = NetworkConfig(n_layers=2, inner_dim=16, ffn_dim=24, att_dim=8, att_heads=2, gate_dim=4, gate_heads=2)
MODULES = ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
TARGETS = ["London", "Berlin", "euro", "Tokyo", "Paris"]


def tiny_editor(model_dir, seed: int = 0, **options) -> tuple[DAFNetEditor, object, GPT2Tokenizer]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    return DAFNetEditor(model, MODULES, TINY, init_edit_lr=1.0, **options).eval(), model, \
        GPT2Tokenizer.from_pretrained(model_dir)


def edit(editor: DAFNetEditor, tok, i: int) -> None:
    with torch.no_grad():
        editor.edit(tokenize_edits(tok, [FACTS[i][0]], [TARGETS[i]]))


class ForgetfulSession:
    """A stand-in for protocols.Session whose model holds only its latest edit."""

    def __init__(self, editor) -> None:
        self.model = frozenset()

    def apply(self, request: dict) -> float:
        self.model = frozenset([request["prompt"]])
        return 0.01

    def restore(self) -> None:
        self.model = frozenset()


class KeepingSession(ForgetfulSession):
    def apply(self, request: dict) -> float:
        self.model = self.model | {request["prompt"]}
        return 0.01


class HoldsEditEvaluator:
    """A stand-in for protocols.Evaluator: an edit scores 1 where the model holds it."""

    def __init__(self, editor) -> None:
        pass

    def remember_unedited(self, requests) -> None:
        pass

    def score(self, model, request: dict):
        from benchmarks.protocols import Scores

        held = float(request["prompt"] in model)
        return Scores([held], [held], [1.0], [held])


@pytest.mark.parametrize("session,final_rewrite", [(ForgetfulSession, 1 / 4), (KeepingSession, 1.0)])
def test_final_scores_every_edit_after_the_last_one(monkeypatch, session, final_rewrite):
    pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
    from benchmarks import protocols

    monkeypatch.setattr(protocols, "Session", session)
    monkeypatch.setattr(protocols, "Evaluator", HoldsEditEvaluator)
    records = [dict(prompt=f"P{i} is", target_new=f"T{i}", rephrase_prompt=f"R{i}", locality_prompt=f"L{i}",
                    locality_ground_truth=f"A{i}") for i in range(8)]
    rows = protocols.run_sequences(object(), records, T=4)
    assert rows["immediate"]["rewrite_acc"] == 1.0 and rows["immediate"]["n_edits"] == 8
    assert rows["final"]["rewrite_acc"] == final_rewrite  # an editor that forgets scores lower in final


def test_memory_limit_caps_the_memory(tiny_gpt2_dir):
    capped, _, tok = tiny_editor(tiny_gpt2_dir, memory_limit=2)
    every, _, _ = tiny_editor(tiny_gpt2_dir)
    for i in range(5):
        edit(capped, tok, i)
        edit(every, tok, i)
    assert {m.shape[0] for mem in capped.memory.values() for m in mem} == {2}
    assert {m.shape[0] for mem in every.memory.values() for m in mem} == {5}
    assert capped.n_edits == every.n_edits == 5


def test_restore_to_a_snapshot_holding_edits_is_bitwise(tiny_gpt2_dir):
    editor, model, tok = tiny_editor(tiny_gpt2_dir)
    ids = tok(FACTS[0][0], return_tensors="pt").input_ids
    edit(editor, tok, 0)
    edit(editor, tok, 1)
    snap = editor.snapshot()
    with torch.no_grad():
        held = model(ids).logits
        edit(editor, tok, 2)
        third = model(ids).logits
        assert not torch.equal(third, held)
        editor.restore(snap)
        assert torch.equal(model(ids).logits, held)
        assert editor.n_edits == 2
        assert all(torch.equal(a, b) for n in MODULES for a, b in zip(editor.memory[n], snap["memory"][n]))
        edit(editor, tok, 2)  # the same edit again, from the restored state, gives the same model
        assert torch.equal(model(ids).logits, third)


def test_an_archive_loads_the_networks_weights(tiny_gpt2_dir, tmp_path):
    trained, _, _ = tiny_editor(tiny_gpt2_dir, seed=1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh network has, constant or random
    torch.save({"model": trained.state_dict()}, tmp_path / "archive.pt")
    fresh, _, _ = tiny_editor(tiny_gpt2_dir, seed=2)
    fresh.load_archive(str(tmp_path / "archive.pt"))
    loaded, expected = fresh.state_dict(), trained.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
