"""The suite's scoring (benchmarks.protocols.Evaluator) on records the pinned host would cut short."""
from __future__ import annotations

import math

import pytest

import dafnet_plugin  # noqa: F401  (its import lets the host import without its multimodal packages)

ee = pytest.importorskip("easyeditor", reason="EasyEdit is not installed")


def test_a_record_longer_than_max_length_is_scored_whole(tiny_hparams):
    from benchmarks.protocols import Evaluator, request_of
    from dafnet_plugin.host import cuda_strings_on_cpu

    tiny_hparams.max_length = 12
    editor = ee.BaseEditor.from_hparams(tiny_hparams)
    long_rephrase = "Some say, and many have written it down at length in books, that the capital of France is"
    record = dict(prompt="The capital of France is", target_new="Rome", rephrase_prompt=long_rephrase,
                  locality_prompt="The capital of Spain is", locality_ground_truth="Madrid")
    request = request_of(record)
    evaluator = Evaluator(editor)
    assert evaluator._longest(request) > tiny_hparams.max_length
    # the pinned host truncates at max_length and then reads an empty answer slice
    with pytest.raises(IndexError), cuda_strings_on_cpu():
        evaluator.compute(editor.model, editor.model_name, tiny_hparams, editor.tok, request, tiny_hparams.device)

    evaluator.remember_unedited([request])
    scores = evaluator.score(editor.model, request)
    assert all(math.isfinite(v) for v in scores.means().values())
    assert scores.locality == [1.0]                  # the unedited model against itself
    assert tiny_hparams.max_length == 12             # given back after scoring
