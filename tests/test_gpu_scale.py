"""benchmarks.gpu_scale on the CPU (its --cpu-smoke path): the script a GPU lease runs must not first
fail there."""
from __future__ import annotations

from transformers import GPT2Tokenizer

from benchmarks.gpu_scale import TINY, requests, run_method


def test_gpu_scale_edits_in_sequence_on_the_cpu(tiny_gpt2_dir):
    tok = GPT2Tokenizer.from_pretrained(tiny_gpt2_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    row = run_method("DAFNet", dict(TINY), tok, "cpu", requests(3))
    assert row["status"] == "ok", row["error"]
    assert row["edits"] == 3 and row["median_s"] > 0
