"""Bad data files name the file and the record: unreadable JSON, null or empty fields, empty targets."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dafnet_plugin.data.dafset import DAFSetDataset, load_records


def record(i: int, **change) -> dict:
    return {"prompt": f"P{i} is", "target_new": f"T{i}", "rephrase_prompt": f"R{i} is",
            "locality_prompt": f"L{i} is", "locality_ground_truth": f"A{i}", **change}


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "counterfact-train.json"
    path.write_text(json.dumps([record(i) for i in range(3)])[:-20])
    with pytest.raises(ValueError, match=r"counterfact-train\.json: not readable as JSON .*line 1"):
        load_records(path)


@pytest.mark.parametrize("field,value,word", [("rephrase_prompt", None, "null"), ("target_new", "", "empty"),
                                              ("locality_ground_truth", "  ", "empty")])
def test_null_or_empty_field_names_file_record_and_field(tmp_path, field, value, word):
    path = tmp_path / "part.json"
    path.write_text(json.dumps([record(0), record(1, **{field: value})]))
    with pytest.raises(ValueError, match=rf"part\.json record 1: '{field}' is {word}"):
        load_records(path)


def test_target_that_tokenises_to_nothing_names_the_record(tmp_path, monkeypatch):
    from dafnet_plugin.data import dafset

    def tokenizer(text, add_special_tokens=True):  # drops what it does not know, as some SentencePiece ones do
        return {"input_ids": [ord(c) for c in text if c.isascii() and not c.isspace()]}

    monkeypatch.setattr(dafset, "_host_tokenizer", lambda config: tokenizer)
    path = tmp_path / "part.json"
    path.write_text(json.dumps([record(0), record(1, target_new="\u4e2d\u6587")]))
    config = SimpleNamespace(tokenizer_class="AutoTokenizer", max_length=40)
    with pytest.raises(ValueError, match=r"part\.json record 1: target_new '.*' is no token at all"):
        DAFSetDataset(path, config=config)
    path.write_text(json.dumps([record(0), record(1)]))
    assert len(DAFSetDataset(path, config=config)) == 2


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps([record(0, target_new="Zürich")], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text \(byte \d+\)"):
        load_records(path)


def zsre_record(i: int, **change) -> dict:
    return {"src": f"Q{i}?", "alt": f"T{i}", "answers": [f"A{i}"], "rephrase": f"R{i}?", "loc": f"nq question: L{i}",
            "loc_ans": f"B{i}", "subject": f"S{i}", **change}


@pytest.mark.parametrize("make,field,value,kind", [
    (record, "target_new", 5, "int"), (record, "prompt", ["P is"], "list"), (record, "ground_truth", 1.5, "float"),
    (record, "subject", {"name": "S"}, "dict"), (record, "locality_ground_truth", True, "bool"),
    (zsre_record, "alt", 7, "int"), (zsre_record, "loc_ans", ["B"], "list"), (zsre_record, "src", 3, "int"),
])
def test_a_field_that_is_not_a_string_names_file_record_and_field(tmp_path, make, field, value, kind):
    path = tmp_path / "part.json"
    path.write_text(json.dumps([make(0), make(1, **{field: value})]))
    with pytest.raises(ValueError, match=rf"part\.json record 1: '{field}' must be a string, not {kind}"):
        load_records(path)


@pytest.mark.parametrize("make,field", [(record, "prompt"), (record, "rephrase_prompt"), (zsre_record, "src")])
def test_a_rome_style_template_prompt_is_named(tmp_path, make, field):
    path = tmp_path / "part.json"
    path.write_text(json.dumps([make(0), make(1, **{field: "The capital of {} is"})]))
    with pytest.raises(ValueError, match=rf"part\.json record 1: '{field}' is a template .*subject filled in"):
        load_records(path)


def test_answers_that_are_not_strings_are_named(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([zsre_record(0), zsre_record(1, answers=[3])]))
    with pytest.raises(ValueError, match=r"zsre\.json record 1: 'answers' must be a non-empty list of strings"):
        load_records(path)
    path.write_text(json.dumps([zsre_record(0), zsre_record(1)]))
    assert [r["target_new"] for r in load_records(path)] == ["T0", "T1"]
