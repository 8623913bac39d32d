"""The knowledge check, and the tiny preset model that knows the built-in facts (built here, in about 1.5 CPU-minutes)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Tokenizer

from dafnet_plugin import tiny_model
from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.data.facts import RELATIONS, all_facts
from dafnet_plugin.data.knowledge import greedy_continuations, is_answer, known_share


@pytest.mark.parametrize(("text", "answer", "expected"), [
    (" Paris.", "Paris", True), ("  paris is", "Paris", True), (' "Buenos Aires", the', "Buenos Aires", True),
    (" Parisian", "Paris", False), (" Buenos", "Buenos Aires", False), (" the euro", "euro", False),
    (" Leonardo da Vinci", "Leonardo da Vinci", True), ("", "Rome", False),
])
def test_is_answer(text: str, answer: str, expected: bool) -> None:
    assert is_answer(text, answer) is expected


@pytest.mark.parametrize("folder", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_untrained_model_knows_almost_nothing(folder: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(folder)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = GPT2Tokenizer.from_pretrained(path)
    facts = all_facts()[::10]
    share, per, known = known_share(model, tok, facts, batch_size=8)
    assert share < 0.2
    assert set(per) == {f.relation for f in facts} and len(known) == round(share * len(facts))
    assert tok.padding_side == "right" and tok.pad_token is None  # the tokenizer is left as it was
    # left padding must not change a continuation: batched equals one at a time
    prompts = [RELATIONS[f.relation].prompt.format(f.subject) for f in facts[:6]]
    assert greedy_continuations(model, tok, prompts, 3, batch_size=6) == [
        greedy_continuations(model, tok, [p], 3)[0] for p in prompts]


def test_tiny_model_knows_the_facts(tiny_facts_model: tuple[Path, str]) -> None:
    cache, path = tiny_facts_model
    assert Path(path) == cache / "models" / "tiny-facts-gpt2" and "gpt" in Path(path).name
    assert sorted(os.listdir(cache / "models")) == ["tiny-facts-gpt2"]  # no temporary folder left behind
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert GPT2Tokenizer.from_pretrained(path)("The capital of France is").input_ids == \
        tok("The capital of France is").input_ids
    share, per, _ = known_share(model, tok, all_facts())
    assert share > 0.5, per
    # Edits and CounterFact records are checked the same way as facts
    edits = make_edits(n=40, seed=0, split="val")
    assert known_share(model, tok, edits)[0] > 0.5
    assert known_share(model, tok, to_counterfact(edits))[0] == known_share(model, tok, edits)[0]


def test_second_call_uses_the_cache(tiny_facts_model: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, path = tiny_facts_model

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tiny model was built again")

    monkeypatch.setattr(tiny_model, "_build", no_training)
    monkeypatch.setenv("DAFNET_CACHE", str(cache))
    assert tiny_model.tiny_model_path() == path
    assert tiny_model.tiny_model_path(str(cache)) == path
