"""The suite's caches are keyed by what the training files hold, not by when they were written."""
import json
import os

from benchmarks.methods.context import Context


def test_a_training_file_written_again_with_the_same_records_finds_the_same_cache(tmp_path):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"prompt": "a", "target_new": "b"}]))
    ctx = Context("model", "", [str(data)], tmp_path / "cache")
    first = ctx.cache_dir("MEND", 400, {"lr": 1e-5})

    data.write_text(data.read_text())  # the same records, a new modification time
    os.utime(data, (1, 1))
    assert ctx.cache_dir("MEND", 400, {"lr": 1e-5}) == first

    assert ctx.cache_dir("MEND", 1000, {"lr": 1e-5}) != first  # other settings, another folder
    data.write_text(json.dumps([{"prompt": "a", "target_new": "c"}]))
    assert ctx.cache_dir("MEND", 400, {"lr": 1e-5}) != first  # other records, another folder
