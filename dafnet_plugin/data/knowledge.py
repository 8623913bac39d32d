"""Which facts a model already knows: greedy continuation of each fact's cloze prompt gives its true object.

Run `python -m dafnet_plugin.data.knowledge [--model smollm2-135m|tiny|PATH]` for the share of the built-in
facts a model knows, overall and per relation.
"""
from __future__ import annotations

import argparse
import string
from collections import defaultdict
from typing import Any, Iterable

from .facts import RELATIONS, Fact, all_facts

_SKIP = string.whitespace + string.punctuation


def _prompt_answer_relation(item: Any) -> tuple[str, str, str]:
    """A Fact, an Edit (or anything with prompt/ground_truth), a CounterFact dict, or a (prompt, answer) pair."""
    if isinstance(item, Fact):
        return RELATIONS[item.relation].prompt.format(item.subject), item.object, item.relation
    if isinstance(item, dict):
        return item["prompt"], item["ground_truth"], item.get("relation", "all")
    if hasattr(item, "prompt") and hasattr(item, "ground_truth"):
        return item.prompt, item.ground_truth, getattr(item, "relation", "all")
    prompt, answer = item
    return prompt, answer, "all"


def is_answer(text: str, answer: str) -> bool:
    """Whether `text` starts with `answer` as whole word(s), ignoring case and leading space/punctuation."""
    text, answer = text.lstrip(_SKIP).lower(), answer.strip().lower()
    return text.startswith(answer) and not text[len(answer):len(answer) + 1].isalnum()


def greedy_continuations(model, tok, prompts: list[str], max_new_tokens: list[int] | int = 8,
                         batch_size: int = 32) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded, shortest first to save padding)."""
    import torch

    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prompts)
    side, pad = tok.padding_side, tok.pad_token
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i]).input_ids))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=False, max_new_tokens=max(max_new_tokens[i] for i in idx),
                                     pad_token_id=tok.pad_token_id)
            for i, row in zip(idx, gen[:, enc.input_ids.shape[1]:]):
                out[i] = tok.decode(row, skip_special_tokens=True)
    finally:
        tok.padding_side, tok.pad_token = side, pad
    return out


def known_share(model, tok, facts_or_edits: Iterable[Any], batch_size: int = 32,
                extra_tokens: int = 2) -> tuple[float, dict[str, float], list[Any]]:
    """Share of facts the model knows; the share per relation; and the known items themselves, in input order.

    A fact is known when the greedy continuation of its cloze prompt starts with its true object (see is_answer);
    each prompt is continued for as many tokens as its object takes, plus `extra_tokens`.
    """
    items = list(facts_or_edits)
    triples = [_prompt_answer_relation(x) for x in items]
    lengths = [len(tok(" " + a, add_special_tokens=False).input_ids) + extra_tokens for _, a, _ in triples]
    texts = greedy_continuations(model, tok, [p for p, _, _ in triples], lengths, batch_size)
    hits = [is_answer(t, a) for t, (_, a, _) in zip(texts, triples)]
    per: dict[str, list[bool]] = defaultdict(list)
    for hit, (_, _, rel) in zip(hits, triples):
        per[rel].append(hit)
    share = sum(hits) / len(hits) if hits else 0.0
    return share, {r: sum(h) / len(h) for r, h in per.items()}, [x for x, h in zip(items, hits) if h]


def load(name_or_path: str):
    """Load the model ("smollm2-135m", "tiny" or a folder) and its tokenizer, in float32 for evaluation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..default_model import resolve_model
    from ..tiny_model import tiny_model_path

    folder = tiny_model_path() if name_or_path == "tiny" else resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, or a model folder")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    model, tok = load(args.model)
    facts = all_facts()
    share, per, _ = known_share(model, tok, facts, batch_size=args.batch_size)
    counts = defaultdict(int)
    for f in facts:
        counts[f.relation] += 1
    print(f"{args.model}: knows {share:.1%} of {len(facts)} built-in facts")
    print(f"{'relation':<20}{'facts':>6}{'known':>8}")
    for rel, s in per.items():
        print(f"{rel:<20}{counts[rel]:>6}{s:>8.1%}")


if __name__ == "__main__":
    main()
