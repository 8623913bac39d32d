"""Tiny models and tokenizers, built here: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]

# tiny models run fastest on one thread, and a busy machine makes two threads spin
torch.set_num_threads(1)

FACTS = [
    ("The capital of France is", "Paris"), ("The capital of Italy is", "Rome"),
    ("The capital of Spain is", "Madrid"), ("The capital of Japan is", "Tokyo"),
    ("The official language of Brazil is", "Portuguese"), ("The currency of Japan is", "yen"),
    ("Apple was founded by", "Steve Jobs"), ("The Eiffel Tower is located in", "Paris"),
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (GPT-2's kind) trained on a few sentences."""
    from tokenizers import ByteLevelBPETokenizer

    out = tmp_path_factory.mktemp("tok")
    bpe = ByteLevelBPETokenizer()
    from dafnet_plugin.data.builtin import make_edits

    texts = [f"{p} {t}." for p, t in FACTS] * 4 + ["Who is the president? The answer is London, Berlin, euro."]
    texts += [f"{e.prompt} {e.ground_truth}. {e.rephrase_prompt} {e.target_new}." for e in make_edits(seed=1)]
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out))
    tok = GPT2Tokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    tok.save_pretrained(out)  # writes tokenizer_config.json naming GPT2Tokenizer
    return out


def _save(model, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(out)
    GPT2Tokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Saved in a folder named like GPT-2, so the host loads it as one."""
    torch.manual_seed(0)
    # weights larger than the default init, so that one layer can move the output (ROME must)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=1000, initializer_range=0.3,
                     bos_token_id=0, eos_token_id=0)
    return _save(GPT2LMHeadModel(cfg), tokenizer_dir, tmp_path_factory.mktemp("m") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A LLaMA-architecture model with a byte-level BPE tokenizer, as SmolLM2; its folder name
    matches none of the host's model families."""
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=128,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return _save(LlamaForCausalLM(cfg), tokenizer_dir, tmp_path_factory.mktemp("m") / "tiny-smol")


@pytest.fixture(scope="session")
def tiny_facts_model(tmp_path_factory) -> tuple[Path, str]:
    """The tiny preset model (dafnet_plugin.tiny_model), trained here to know the built-in facts:
    (its cache root, its folder). Built once per session, in about 1.5 CPU-minutes."""
    from dafnet_plugin import tiny_model

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAFNET_CACHE", str(cache))
        return cache, tiny_model.tiny_model_path()


@pytest.fixture
def tiny_hparams(tiny_gpt2_dir):
    from dafnet_plugin import DAFNetHyperParams

    hp = DAFNetHyperParams.from_hparams(str(REPO / "hparams/DAFNet/tiny-gpt2.yaml"))
    hp.model_name = str(tiny_gpt2_dir)
    return hp


def tiny_rome_config(model_dir, stats_dir) -> dict:
    """ROME for the tiny 2-layer GPT-2: edit layer 0 at the last token, so that the one layer
    after it carries the edit to the prediction (a random tiny model has no subject recall)."""
    return {"alg_name": "ROME", "model_name": str(model_dir), "device": 0, "layers": [0],
            "fact_token": "last", "v_num_grad_steps": 60, "v_lr": 0.5, "v_loss_layer": 1,
            "v_weight_decay": 0.001, "clamp_norm_factor": 50, "kl_factor": 0.0, "mom2_adjustment": False,
            "context_template_length_params": [[5, 5]], "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
            "layer_module_tmp": "transformer.h.{}", "mlp_module_tmp": "transformer.h.{}.mlp",
            "attn_module_tmp": "transformer.h.{}.attn", "ln_f_module": "transformer.ln_f",
            "lm_head_module": "transformer.wte", "mom2_dataset": "wikipedia", "mom2_n_samples": 10,
            "mom2_dtype": "float32", "stats_dir": str(stats_dir), "max_length": 40}


def final_accuracy(editor, tok, records) -> float:
    """Edit every record in sequence, one by one, on the editor's device, then score each target's
    token accuracy (teacher-forced argmax) after the last edit."""
    from dafnet_plugin import tokenize_edits

    editor.eval()
    editor.reset()
    device = editor.edit_lrs.device
    batches = [tokenize_edits(tok, [r["prompt"]], [r["target_new"]]).to(device) for r in records]
    scores = []
    with torch.no_grad():
        for batch in batches:
            editor.edit(batch)
        for batch in batches:
            predicted = editor.model(input_ids=batch.input_ids).logits[0, :-1].argmax(-1)
            labels = batch.labels[0, 1:]
            scores.append((predicted[labels != -100] == labels[labels != -100]).float().mean().item())
    editor.reset()
    return sum(scores) / len(scores)


def short_training_hparams(model_path: str):
    """DAFNet training of the tiny facts model: cached trunk, k in 1..20, 20 edits scored a step."""
    from dafnet_plugin.hparams import DAFNetTrainingHparams

    hp = DAFNetTrainingHparams.from_hparams(str(REPO / "hparams/TRAINING/DAFNet/tiny-gpt2.yaml"))
    hp.model_name = hp.tokenizer_name = model_path
    hp.trunk_cache, hp.curriculum, hp.max_sequence, hp.trunk_pool, hp.score_edits = True, "uniform", 20, 400, 20
    return hp
