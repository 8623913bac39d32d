"""Counterfactual edits over the built-in fact table, and writers for EasyEdit's CounterFact and ZsRE forms.

Run `python -m dafnet_plugin.data.builtin --out DIR --seed 0` to write the train and held-apart files.
"""

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .facts import RELATIONS, Fact, all_facts, object_pool

# Share of subjects held apart for evaluation.
VAL_FRACTION = 0.2


class Split(NamedTuple):
    train: list[Fact]
    val: list[Fact]


@dataclass(frozen=True)
class Edit:
    """One counterfactual edit: make `subject` answer `target_new` instead of `ground_truth`."""

    case_id: int  # the fact's index in all_facts(), so ids stay unique across splits and seeds
    relation: str
    subject: str
    ground_truth: str
    target_new: str
    prompt: str
    rephrase_prompt: str
    question: str
    rephrase_question: str
    locality_prompt: str
    locality_question: str
    locality_ground_truth: str


def split_facts(seed: int = 0) -> Split:
    """Split the facts by subject, so that no subject (e.g. a country with four facts) is on both sides."""
    facts = all_facts()
    subjects = sorted({f.subject for f in facts})
    random.Random(seed).shuffle(subjects)
    held = set(subjects[: round(len(subjects) * VAL_FRACTION)])
    return Split(
        train=[f for f in facts if f.subject not in held],
        val=[f for f in facts if f.subject in held],
    )


def make_edits(
    n: int | None = None,
    seed: int = 0,
    split: Literal["train", "val"] | None = None,
    split_seed: int = 0,
) -> list[Edit]:
    """`n` edits (all facts of the pool when None) from all facts, or from one side of split_facts(split_seed).

    `seed` draws which facts are edited, their new targets, paraphrases and locality facts; the split
    has its own seed so that edits drawn under different seeds keep the same held-apart subjects.
    """
    if split is None:
        pool = all_facts()
    elif split in ("train", "val"):
        pool = getattr(split_facts(split_seed), split)
    else:
        raise ValueError(f"split must be 'train', 'val' or None, not {split!r}")
    if n is not None and not 0 <= n <= len(pool):
        raise ValueError(f"n={n} is outside 0..{len(pool)}, the number of facts to edit")
    rng = random.Random(seed)
    case_ids = {f: i for i, f in enumerate(all_facts())}
    chosen = rng.sample(pool, len(pool) if n is None else n)
    return [_make_edit(f, case_ids[f], pool, rng) for f in chosen]


def _make_edit(fact: Fact, case_id: int, pool: list[Fact], rng: random.Random) -> Edit:
    rel = RELATIONS[fact.relation]
    others = [f for f in pool if f.subject != fact.subject]
    # A neighbour of the same relation is the hardest locality check (same prompt wording, other subject);
    # any other subject's fact serves where the pool holds no such neighbour.
    loc = rng.choice([f for f in others if f.relation == fact.relation] or others)
    return Edit(
        case_id=case_id,
        relation=fact.relation,
        subject=fact.subject,
        ground_truth=fact.object,
        target_new=rng.choice([o for o in object_pool(fact.relation) if o != fact.object]),
        prompt=rel.prompt.format(fact.subject),
        rephrase_prompt=rng.choice(rel.paraphrases).format(fact.subject),
        question=rel.questions[0].format(fact.subject),
        rephrase_question=rng.choice(rel.questions[1:]).format(fact.subject),
        locality_prompt=RELATIONS[loc.relation].prompt.format(loc.subject),
        locality_question=RELATIONS[loc.relation].questions[0].format(loc.subject),
        locality_ground_truth=loc.object,
    )


def to_counterfact(records: list[Edit]) -> list[dict]:
    """EasyEdit's CounterFact form, as its CounterFactDataset reads it."""
    return [
        {
            "case_id": r.case_id,
            "prompt": r.prompt,
            "subject": r.subject,
            "target_new": r.target_new,
            "ground_truth": r.ground_truth,
            "rephrase_prompt": r.rephrase_prompt,
            "locality_prompt": r.locality_prompt,
            "locality_ground_truth": r.locality_ground_truth,
        }
        for r in records
    ]


def to_zsre(records: list[Edit]) -> list[dict]:
    """MEND's ZsRE form, as EasyEdit's ZsreDataset reads it (it requires `loc` to start with "nq question: ")."""
    return [
        {
            "subject": r.subject,
            "src": r.question,
            "pred": r.ground_truth,
            "rephrase": r.rephrase_question,
            "alt": r.target_new,
            "answers": [r.ground_truth],
            "loc": "nq question: " + r.locality_question,
            "loc_ans": r.locality_ground_truth,
            "cond": f"{r.ground_truth} >> {r.target_new} || {r.question}",
        }
        for r in records
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the JSON files to")
    parser.add_argument("--seed", type=int, default=0, help="seed for targets, paraphrases and locality facts")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        records = make_edits(seed=args.seed, split=split)
        for form, write in (("cf", to_counterfact), ("zsre", to_zsre)):
            path = args.out / f"builtin-{split}-{form}.json"
            path.write_text(json.dumps(write(records), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
