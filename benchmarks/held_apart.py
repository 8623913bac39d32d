"""Evaluation records held apart from a training file: the last N records, and no training record
that shares a subject with them, so an editor is never scored on a fact (or a subject) it trained on.
Used where one file must serve both (ZsRE's 1k sample; MEND's sweep on CounterFact's train split)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def split_held_apart(records: list[dict], holdout: int) -> tuple[list[dict], list[dict]]:
    """(training part, held-apart part): the last ``holdout`` records are held apart, and no record of
    the training part shares a subject with them."""
    if not 0 < holdout < len(records):
        raise ValueError(f"holdout {holdout} must be between 1 and {len(records) - 1}")
    held = records[-holdout:]
    subjects = {r["subject"] for r in held}
    train = [r for r in records[:-holdout] if r["subject"] not in subjects]
    return train, held


def write_if_changed(path: Path, records: list[dict]) -> None:
    """The suite's caches are keyed by a file's size and mtime: rewrite it only when its content changes."""
    text = json.dumps(records)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def held_apart_files(eval_file: str, train_files: list[str], holdout: int, folder: Path) -> tuple[str, list[str]]:
    """Split ``eval_file`` (raw records, in its own form) into ``folder/<name>-<hash>-train.json`` and
    ``-heldapart.json``; the training files naming ``eval_file`` are replaced by the training part.
    Returns (evaluation file, training files)."""
    source = Path(eval_file).resolve()
    raw = json.loads(source.read_text())
    missing = next((i for i, r in enumerate(raw) if "subject" not in r), None)
    if missing is not None:
        raise ValueError(f"{source.name} record {missing}: no 'subject', which held_apart splits by")
    train, held = split_held_apart(raw, holdout)
    tag = hashlib.sha256(f"{source}:{source.stat().st_size}:{holdout}".encode()).hexdigest()[:8]
    folder.mkdir(parents=True, exist_ok=True)
    train_path, held_path = (folder / f"{source.stem}-{tag}-{part}.json" for part in ("train", "heldapart"))
    write_if_changed(train_path, train)
    write_if_changed(held_path, held)
    return str(held_path), [str(train_path) if Path(f).resolve() == source else f for f in train_files]
