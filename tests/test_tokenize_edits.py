"""tokenize_edits keeps every target token: a prompt and target longer than max_length stop with a
message naming them, where cutting them would have made DAFNet edit toward a prompt token."""
from __future__ import annotations

import pytest
from transformers import GPT2Tokenizer

from dafnet_plugin import tokenize_edits

PROMPT = "Some say, and many have written it down at length in books, that the capital of France is"
TARGET = "Rome"


@pytest.fixture
def tok(tokenizer_dir):
    return GPT2Tokenizer.from_pretrained(tokenizer_dir)


def test_a_pair_that_fits_exactly_keeps_its_whole_target(tok):
    n_tokens = len(tok(f"{PROMPT} {TARGET}")["input_ids"])
    batch = tokenize_edits(tok, [PROMPT], [TARGET], max_length=n_tokens)
    target_ids = batch.input_ids[0][batch.labels[0] != -100]
    assert tok.decode(target_ids).strip() == TARGET


@pytest.mark.parametrize("short_by", [1, 8])  # the target's last token cut; target and prompt's end cut
def test_a_pair_longer_than_max_length_names_prompt_target_counts_and_max_length(tok, short_by):
    n_tokens = len(tok(f"{PROMPT} {TARGET}")["input_ids"])
    n_prompt = len(tok(PROMPT)["input_ids"])
    max_length = n_tokens - short_by
    with pytest.raises(ValueError) as error:
        tokenize_edits(tok, [PROMPT], [TARGET], max_length=max_length)
    message = str(error.value)
    assert "\n" not in message
    assert repr(PROMPT) in message and repr(TARGET) in message
    assert f"{n_tokens} tokens ({n_prompt} + {n_tokens - n_prompt})" in message
    assert f"max_length {max_length}" in message and f"at least {n_tokens}" in message


def test_one_long_edit_in_a_batch_stops_the_batch(tok):
    n_short = len(tok("The capital of Spain is Madrid")["input_ids"])
    with pytest.raises(ValueError, match="raise max_length"):
        tokenize_edits(tok, ["The capital of Spain is", PROMPT], ["Madrid", TARGET], max_length=n_short + 2)


def test_a_subject_in_a_prompt_that_fits_is_marked(tok):
    batch = tokenize_edits(tok, [PROMPT], [TARGET], max_length=64, subjects=["France"])
    assert tok.decode(batch.input_ids[0][batch.subject_mask[0]]).strip() == "France"
