"""The built-in edit data: fact table, counterfactual edits, splits and the EasyEdit record forms."""

import json

import pytest

from dafnet_plugin.data.builtin import main, make_edits, split_facts, to_counterfact, to_zsre
from dafnet_plugin.data.facts import RELATIONS, all_facts, object_pool

CF_KEYS = {
    "case_id", "prompt", "subject", "target_new", "ground_truth",
    "rephrase_prompt", "locality_prompt", "locality_ground_truth",
}
ZSRE_KEYS = {"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond"}


@pytest.fixture(scope="module")
def edits():
    return make_edits(seed=0)


def test_fact_table_size_and_uniqueness():
    facts = all_facts()
    assert len(facts) >= 600
    assert len(RELATIONS) >= 8
    assert len({(f.subject, f.relation) for f in facts}) == len(facts)


def test_templates_take_one_subject_and_paraphrases_differ():
    for name, rel in RELATIONS.items():
        templates = (rel.prompt, *rel.paraphrases, *rel.questions)
        assert all(t.count("{}") == 1 for t in templates)
        assert len(rel.paraphrases) >= 3 and rel.prompt not in rel.paraphrases
        assert len(rel.questions) >= 2
        assert len(object_pool(name)) >= 2


def test_deterministic_under_seed():
    assert make_edits(50, seed=1) == make_edits(50, seed=1)
    assert make_edits(50, seed=1) != make_edits(50, seed=2)
    assert split_facts(3) == split_facts(3)


def test_edit_fields(edits):
    assert len(edits) == len(all_facts())
    for e in edits:
        assert e.target_new != e.ground_truth
        assert e.target_new in object_pool(e.relation)
        assert e.subject in e.prompt and e.subject in e.rephrase_prompt and e.subject in e.question
        assert e.rephrase_prompt != e.prompt
        assert e.rephrase_question != e.question


def test_locality_comes_from_another_subject(edits):
    # Each fact's cloze prompt is unique, so it names the locality fact.
    facts = {RELATIONS[f.relation].prompt.format(f.subject): f for f in all_facts()}
    for e in edits:
        loc = facts[e.locality_prompt]
        assert loc.subject != e.subject and loc.object == e.locality_ground_truth


def test_splits_are_disjoint_by_subject():
    split = split_facts(0)
    assert {f.subject for f in split.train}.isdisjoint(f.subject for f in split.val)
    assert len(split.train) + len(split.val) == len(all_facts())
    train, val = make_edits(seed=5, split="train"), make_edits(seed=5, split="val")
    assert {e.subject for e in train}.isdisjoint(e.subject for e in val)
    assert {e.locality_prompt for e in val} <= {RELATIONS[f.relation].prompt.format(f.subject) for f in split.val}


def test_record_forms(edits):
    cf, zsre = to_counterfact(edits), to_zsre(edits)
    assert all(set(r) == CF_KEYS for r in cf)
    assert len({r["case_id"] for r in cf}) == len(cf)
    for r in zsre:
        assert set(r) == ZSRE_KEYS
        assert r["alt"] and r["answers"] == [r["pred"]]
        assert r["loc"].startswith("nq question: ")
        assert r["cond"] == f"{r['pred']} >> {r['alt']} || {r['src']}"


def test_cli_writes_four_files(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "0"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"builtin-{s}-{f}.json" for s in ("train", "val") for f in ("cf", "zsre")]
    train = json.loads((tmp_path / "builtin-train-cf.json").read_text())
    val = json.loads((tmp_path / "builtin-val-cf.json").read_text())
    assert {r["subject"] for r in train}.isdisjoint(r["subject"] for r in val)
    assert "records" in capsys.readouterr().out
