"""The tiny preset model: a small GPT-2 trained here, in about 1.5 minutes of one CPU thread, to know the built-in facts.

It is built once and cached under <cache root>/models/tiny-facts-gpt2 (the name holds "gpt", which EasyEdit
reads to pick the tokenizer class). Its byte-level BPE tokenizer is trained on the same sentences as the
model: every built-in fact in each of its relation's cloze templates and question forms, followed by the
true object. Training is seeded and runs on one thread, so the same facts give the same weights.

Run `python -m dafnet_plugin.tiny_model` to build it; it prints the folder.
"""
from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from pathlib import Path

from .data.facts import RELATIONS, all_facts
from .default_model import cache_root

_FOLDER = Path("models") / "tiny-facts-gpt2"
SEED = 0
VOCAB_SIZE = 2048
# Width matters more than depth for memorising the facts; two layers, as hparams/DAFNet/tiny-gpt2.yaml edits h.1
MODEL_SIZE = dict(n_layer=2, n_embd=128, n_head=4, n_inner=256, n_positions=64)
# Knowledge comes suddenly: 5 epochs know 57% of the facts, 7 know 94%
EPOCHS, BATCH, LR = 7, 32, 4e-3
EOS = "<|endoftext|>"


def fact_sentences() -> list[str]:
    """Every fact in its relation's prompt, paraphrase and question forms, each followed by the true object."""
    out = []
    for f in all_facts():
        rel = RELATIONS[f.relation]
        out += [f"{t.format(f.subject)} {f.object}." for t in (rel.prompt, *rel.paraphrases, *rel.questions)]
    return out


def tiny_model_path(cache_dir: str | None = None, seconds_budget: float = 600.0) -> str:
    """Return the cached tiny fact model's folder, training it on first use.

    `seconds_budget` caps training's CPU time (process time, so a busy machine does not cut it short): past it,
    training stops after the current epoch with a warning, and the weights then depend on the machine's speed.
    Training takes 75-95 CPU seconds, so the cap is only a safeguard.
    """
    target = cache_root(cache_dir) / _FOLDER
    # The folder only ever appears through an atomic rename, so its presence means complete
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as tmp:
        out = Path(tmp) / "model"
        _build(out, seconds_budget)
        try:
            out.rename(target)
        except OSError:
            # Another process finished first; its folder is as good as ours
            if not (target / "config.json").is_file():
                raise
    return str(target)


def _log(message: str) -> None:
    print(f"[dafnet] {message}", file=sys.stderr, flush=True)


def _build(out: Path, seconds_budget: float) -> None:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    texts = fact_sentences()
    out.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=1, special_tokens=[EOS], show_progress=False)
    bpe.save_model(str(out))
    tok = GPT2Tokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    tok.model_max_length = MODEL_SIZE["n_positions"]
    tok.save_pretrained(out)  # writes tokenizer_config.json naming GPT2Tokenizer, so AutoTokenizer loads it too
    eos = tok.convert_tokens_to_ids(EOS)
    seqs = [tok(t).input_ids + [eos] for t in texts]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: fast for a model this small, and bitwise reproducible
    try:
        torch.manual_seed(SEED)
        cfg = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODEL_SIZE)
        model = GPT2LMHeadModel(cfg)
        _train(model, seqs, eos, seconds_budget)
    finally:
        torch.set_num_threads(threads)
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)


def _train(model, seqs: list[list[int]], pad: int, seconds_budget: float) -> None:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.98))
    steps = EPOCHS * math.ceil(len(seqs) / BATCH)
    warmup = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    rng, start = random.Random(SEED), time.process_time()
    model.train()
    for epoch in range(EPOCHS):
        # batches of sentences of about the same length (little padding), in random order
        keys = {i: (len(s), rng.random()) for i, s in enumerate(seqs)}
        order = sorted(range(len(seqs)), key=keys.__getitem__)
        batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
        rng.shuffle(batches)
        total = 0.0
        for idx in batches:
            batch = [seqs[j] for j in idx]
            width = max(map(len, batch))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item() * len(batch)
        elapsed = time.process_time() - start
        _log(f"tiny model epoch {epoch + 1}/{EPOCHS}: loss {total / len(seqs):.3f} ({elapsed:.0f}s CPU)")
        if elapsed > seconds_budget and epoch + 1 < EPOCHS:
            _log(f"warning: training passed its {seconds_budget:.0f}s budget; stopping early")
            break
    model.eval()


if __name__ == "__main__":
    print(tiny_model_path())
