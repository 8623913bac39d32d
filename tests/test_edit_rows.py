"""The edit locus: which token rows of an edit feed DAFNet's network and carry its update."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin import DAFNetEditor, EditBatch, NetworkConfig, tokenize_edits
from dafnet_plugin.editor import ROWS, token_rows

TINY = NetworkConfig(n_layers=2, inner_dim=16, ffn_dim=24, att_dim=8, att_heads=2, gate_dim=4, gate_heads=2)
LLAMA_MODULES = [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]
EDITS = [("The capital of France is", "France", "London"), ("Apple was founded by", "Apple", "Steve Jobs"),
         ("The Eiffel Tower is located in", "Eiffel Tower", "Rome"), ("The currency of Japan is", "Japan", "euro")]


def batch_of(tok, edits=EDITS) -> EditBatch:
    return tokenize_edits(tok, [p for p, _, _ in edits], [t for _, _, t in edits], subjects=[s for _, s, _ in edits])


def one(batch: EditBatch, i: int) -> EditBatch:
    return EditBatch(*(t[i:i + 1] for t in (batch.input_ids, batch.attention_mask, batch.labels, batch.subject_mask)))


def test_rows_select_the_subject_its_last_token_and_the_prompts_last_token(tiny_llama_dir):
    tok = GPT2Tokenizer.from_pretrained(tiny_llama_dir)
    batch = batch_of(tok)
    for i, (prompt, subject, _) in enumerate(EDITS):
        ids = batch.input_ids[i]
        assert tok.decode(ids[token_rows(batch, "subject")[i]]).strip() == subject
        (last_of_subject,) = token_rows(batch, "subject_last")[i].nonzero()[0]
        assert tok.decode(ids[:last_of_subject + 1]).endswith(subject)
        (last_of_prompt,) = token_rows(batch, "last")[i].nonzero()[0]
        assert tok.decode(ids[:last_of_prompt + 1]) == prompt
        assert torch.equal(token_rows(batch, "all")[i], batch.attention_mask[i].bool())


@pytest.mark.parametrize("rows", ROWS)
def test_k_edits_at_once_equal_one_by_one_for_every_rows_choice(rows, tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_llama_dir)
    editor = DAFNetEditor(model, LLAMA_MODULES, TINY, init_edit_lr=0.1, precondition=True, rows=rows).eval()
    for net in editor.networks.values():  # a trained-looking network: strength and yield depend on the edit
        for head in (net.strength, net.yield_):
            torch.nn.init.normal_(head.weight, std=0.3)
        net.yield_.bias.data.fill_(-1.0)
    batch = batch_of(tok)
    editor.edit(batch)
    at_once = dict(editor.deltas)
    editor.reset()
    for i in range(len(EDITS)):
        editor.edit(one(batch, i))
    for name in LLAMA_MODULES:
        torch.testing.assert_close(editor.deltas[name], at_once[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", ROWS)
def test_an_edits_update_is_made_of_its_selected_rows_only(rows, tiny_llama_dir):
    """One edit's ΔW is a sum of one outer product per selected row: its rank is the number of rows
    (one for MEMIT's subject_last)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_llama_dir)
    # layer 0: its outputs reach the target through the attention of layer 1 from every position
    editor = DAFNetEditor(model, LLAMA_MODULES[:1], TINY, init_edit_lr=1.0, rows=rows).eval()
    eiffel = one(batch_of(tok), 2)  # "The Eiffel Tower is located in Rome": a subject of several tokens
    n_subject, n_tokens = int(token_rows(eiffel, "subject").sum()), int(eiffel.attention_mask.sum())
    assert n_subject > 1
    # every row but the last carries a signal (the last token predicts nothing the loss reads)
    expected = {"subject_last": 1, "last": 1, "subject": n_subject, "all": n_tokens - 1}[rows]
    (x, _), = editor.gradient_signals(eiffel).values()
    assert len(x) == expected
    editor.edit(eiffel)
    (delta,) = editor.deltas.values()
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == expected


def test_subject_rows_refuse_an_edit_whose_subject_is_not_in_its_prompt(tiny_llama_dir, tiny_hparams, tiny_gpt2_dir):
    tok = GPT2Tokenizer.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="'Germany' does not occur in the prompt 'The capital of France is'"):
        tokenize_edits(tok, ["The capital of France is"], ["Berlin"], subjects=["Germany"])
    with pytest.raises(ValueError, match="rows: subject_last needs each edit's subject"):
        token_rows(tokenize_edits(tok, ["The capital of France is"], ["Berlin"]), "subject_last")
    from dafnet_plugin.host import apply_dafnet_to_model

    tiny_hparams.rows = "subject_last"
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    request = {"prompt": "The capital of France is", "target_new": "Berlin"}
    with pytest.raises(ValueError, match="request 0 has no 'subject' \\(rows: subject_last\\)"):
        apply_dafnet_to_model(model, tok, [request], tiny_hparams)
    _, undo = apply_dafnet_to_model(model, tok, [{**request, "subject": "France"}], tiny_hparams,
                                    keep_original_weight=True)
    from dafnet_plugin import attached
    assert attached(model).n_edits == 1


def test_a_module_no_selected_row_reaches_writes_nothing_and_stays_finite(tiny_llama_dir):
    """The last layer's output at the subject reaches no later position, so its gradient signal there is
    zero: training must not turn the empty signal into NaN statistics (it did), and the update is zero."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_llama_dir)
    editor = DAFNetEditor(model, LLAMA_MODULES, TINY, init_edit_lr=1.0, rows="subject_last").train()
    signals = editor.gradient_signals(batch_of(tok))
    assert len(signals[LLAMA_MODULES[0]][0]) == len(EDITS) and len(signals[LLAMA_MODULES[1]][0]) == 0
    editor.edit(batch_of(tok), detach_past=False)
    for net in editor.networks.values():
        assert torch.isfinite(net.norm.mean).all() and torch.isfinite(net.norm.m2).all()
    sum(d.square().sum() for d in editor.deltas.values()).backward()  # as training does: no NaN gradient
    assert all(torch.isfinite(p.grad).all() for p in editor.parameters() if p.grad is not None)
    assert torch.count_nonzero(editor.deltas[LLAMA_MODULES[1]]) == 0
    assert torch.isfinite(editor.deltas[LLAMA_MODULES[0]]).all() and editor.deltas[LLAMA_MODULES[0]].abs().sum() > 0
