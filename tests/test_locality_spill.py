"""benchmarks.locality_spill sorts the locality prompts a sequence changed, on the tiny model."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from benchmarks.locality_spill import spill
from dafnet_plugin import DAFNetEditor, NetworkConfig
from dafnet_plugin.data.builtin import make_edits, to_counterfact

TINY = NetworkConfig(n_layers=2, inner_dim=16, ffn_dim=24, att_dim=8, att_heads=2, gate_dim=4, gate_heads=2)
MODULES = ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]


def test_spill_counts_only_changed_answers_and_sorts_each(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    records = to_counterfact(make_edits(12, split="val"))
    torch.manual_seed(0)
    still = spill(DAFNetEditor(model, MODULES, TINY, edit_scale=0.0).eval(), tok, records)
    assert still["n"] == 12 and still["changed"] == 0 and still["rows"] == []     # no update, no change
    loud = spill(DAFNetEditor(model, MODULES, TINY, init_edit_lr=50.0).eval(), tok, records)
    assert loud["changed"] > 0
    assert loud["own_target"] + loud["other_target"] + loud["elsewhere"] == loud["changed"] == len(loud["rows"])
    assert all(r["before_id"] != r["after_id"] for r in loud["rows"])  # two ids may decode alike
