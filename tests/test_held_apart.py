"""Evaluation records held apart from a training file (benchmarks/held_apart.py) and the ZsRE preset
that uses them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.held_apart import held_apart_files, split_held_apart
from benchmarks.presets import PRESETS
from dafnet_plugin.data.builtin import make_edits, to_zsre
from dafnet_plugin.data.dafset import load_records


def test_held_apart_subjects_never_train():
    records = [{"subject": s, "prompt": f"{s} {i}"} for i, s in enumerate("abcadeb")]
    train, held = split_held_apart(records, 2)
    assert [r["prompt"] for r in held] == ["e 5", "b 6"]
    assert [r["prompt"] for r in train] == ["a 0", "c 2", "a 3", "d 4"]  # "b 1" shares a held-apart subject
    with pytest.raises(ValueError, match="holdout 7"):
        split_held_apart(records, 7)


def test_held_apart_files_replace_the_training_file_and_keep_its_form(tmp_path):
    source = tmp_path / "zsre.json"
    raw = to_zsre(make_edits(split="train"))
    source.write_text(json.dumps(raw))
    other = str(tmp_path / "other.json")
    eval_file, train_files = held_apart_files(str(source), [str(source), other], 5, tmp_path / "splits")
    assert train_files[1] == other and train_files[0] != str(source)
    held, train = json.loads(open(eval_file).read()), json.loads(open(train_files[0]).read())
    assert held == raw[-5:] and "src" in train[0]  # MEND's form, as the host's ZsreDataset reads it
    assert not {r["subject"] for r in held} & {r["subject"] for r in train}
    assert len(load_records(eval_file)) == 5
    # a second run finds the same files, untouched
    stamp = Path(train_files[0]).stat().st_mtime_ns
    again = held_apart_files(str(source), [str(source)], 5, tmp_path / "splits")
    assert again == (eval_file, train_files[:1]) and Path(train_files[0]).stat().st_mtime_ns == stamp


def test_held_apart_needs_subjects(tmp_path):
    source = tmp_path / "no-subject.json"
    source.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    with pytest.raises(ValueError, match="no-subject.json record 0: no 'subject'"):
        held_apart_files(str(source), [str(source)], 1, tmp_path)


def test_zsre_preset_holds_its_evaluation_apart():
    zsre = PRESETS["smollm2-zsre"]
    assert zsre["eval"] in zsre["train"] and zsre["held_apart"] > max(zsre["T"])
    # the same budgets as CounterFact's; MEND's ZsRE rows keep the setting they were measured with (presets.py)
    cf = PRESETS["smollm2-cf"]
    def but_mend(steps):
        return {m: n for m, n in steps.items() if m != "MEND"}
    assert but_mend(zsre["steps"]) == but_mend(cf["steps"])
    assert zsre["training"] == cf["training"]


def test_dev_split_lies_outside_dafnets_training_pool(tmp_path):
    from benchmarks.dev_split import dev_records

    def record(subject, i):
        return {"subject": subject, "prompt": f"{subject} works for", "target_new": f"t{i}",
                "rephrase_prompt": f"{subject} is employed by", "locality_prompt": "x", "locality_ground_truth": "y"}

    cf = [record(s, i) for i, s in enumerate("abcdefgh")]
    dafset = [record("a", 0), record("z", 9)]  # DAFSet repeats a CounterFact edit, as the real files do
    files = [tmp_path / "cf.json", tmp_path / "dafset.json"]
    for path, records in zip(files, (cf, dafset)):
        path.write_text(json.dumps(records))
    # a pool of 5 takes 4 from cf (a-d) and 1 from dafset (its "a" repeats an edit taken, so z):
    # e-h lie outside it, and the last 3 of them form the split
    dev = dev_records([str(f) for f in files], 5, 3)
    assert [r["subject"] for r in dev] == ["f", "g", "h"]
    assert dev[0] == cf[5]  # in EasyEdit's form, which a CounterFact file already has
    with pytest.raises(ValueError, match="only 4 records"):
        dev_records([str(f) for f in files], 5, 5)
