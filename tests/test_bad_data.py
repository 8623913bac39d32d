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
