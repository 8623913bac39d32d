"""DAFNet on CUDA: a bf16 model edited and meta-trained by fp32 networks (issue 10, item 7).
These run only where a GPU is; on a CPU they skip."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin.data.builtin import make_edits, to_counterfact

from conftest import final_accuracy, short_training_hparams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


def test_bf16_model_fp32_networks_cached_training_on_cuda(tiny_facts_model, tmp_path):
    from dafnet_plugin import attach
    from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for

    _, path = tiny_facts_model
    hp = short_training_hparams(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda").eval()
    tok = GPT2Tokenizer.from_pretrained(path)
    editor = attach(model, hp, seed=0)
    assert editor.edit_lrs.device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in editor.parameters())        # the networks: fp32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())        # the model: bf16
    held_out = to_counterfact(make_edits(20, split="val"))
    cache = trunk_cache_for(editor, tok, {"train": to_counterfact(make_edits(400, split="train"))}, hp, tmp_path)
    before = final_accuracy(editor, tok, held_out)
    history = DAFNetTrainer(editor, tok, hp, None, tmp_path / "ck.pt", cache).run(150)
    after = final_accuracy(editor, tok, held_out)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert after > before + 0.2, (before, after)
