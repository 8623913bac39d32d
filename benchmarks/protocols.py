"""Evaluation protocols for every method, driven by the host: its editor's apply function edits,
its ``compute_edit_quality`` scores.

- single: edit one record, score it, restore (T = 1);
- immediate: a sequence of T edits, each scored right after its own edit (what EasyEdit reports);
- final: the same sequence, every edit scored after the last one (where forgetting shows).

Locality is the share of locality-answer tokens whose argmax equals the *unedited* model's.
``gen_em`` is a greedy-generation exact match of the target, which teacher forcing cannot flatter.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from dafnet_plugin import attached
from dafnet_plugin.host import cuda_strings_on_cpu

Record = dict


def request_of(record: Record) -> dict:
    """The host's request form (what ``BaseEditor._prepare_requests`` builds)."""
    return {"prompt": record["prompt"], "target_new": record["target_new"],
            "ground_truth": record.get("ground_truth") or "<|endoftext|>",
            "subject": record.get("subject") or record["prompt"].split()[0],
            "rephrase_prompt": record["rephrase_prompt"], "portability": {},
            "locality": {"neighborhood": {"prompt": record["locality_prompt"],
                                          "ground_truth": record["locality_ground_truth"]}}}


@dataclass
class Scores:
    rewrite: list[float] = field(default_factory=list)
    rephrase: list[float] = field(default_factory=list)
    locality: list[float] = field(default_factory=list)
    gen_em: list[float] = field(default_factory=list)

    def add(self, other: "Scores") -> None:
        for name in ("rewrite", "rephrase", "locality", "gen_em"):
            getattr(self, name).extend(getattr(other, name))

    def means(self) -> dict[str, float]:
        return {"rewrite_acc": _mean(self.rewrite), "rephrase_acc": _mean(self.rephrase),
                "locality": _mean(self.locality), "gen_em": _mean(self.gen_em)}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@contextmanager
def _room_for(hparams, n_tokens: int):
    """The pinned host's ``test_prediction_acc`` truncates prompt + answer at ``hparams.max_length``
    (40 for most methods) and then scores an empty slice, or fails with an IndexError, on a longer
    record (16 of counterfact-train's, 3 of counterfact-val's). The current host truncates at
    ``max(max_length, longest)``; this gives the pinned one the same room while it scores."""
    before = hparams.max_length
    hparams.max_length = max(before, n_tokens + 1)
    try:
        yield
    finally:
        hparams.max_length = before


class Evaluator:
    """Scores requests on ``editor.model`` with the host's metrics; locality is measured against
    the unedited model's outputs, recorded by ``remember_unedited``."""

    def __init__(self, editor) -> None:
        from easyeditor.evaluate.evaluate import compute_edit_quality

        self.editor, self.compute = editor, compute_edit_quality
        self.unedited: dict[str, list] = {}

    def _quality(self, model, request: dict) -> dict:
        e = self.editor
        with cuda_strings_on_cpu(), torch.no_grad(), _room_for(e.hparams, self._longest(request)):
            return self.compute(model, e.model_name, e.hparams, e.tok, request, e.hparams.device)

    def _longest(self, request: dict) -> int:
        """Tokens in the longest prompt + answer the host will score for ``request``."""
        loc = request["locality"]["neighborhood"]
        pairs = [(request["prompt"], request["target_new"]), (request["rephrase_prompt"], request["target_new"]),
                 (loc["prompt"], loc["ground_truth"])]
        return max(len(self.editor.tok(f"{p} {a}")["input_ids"]) for p, a in pairs)

    def remember_unedited(self, requests: Iterable[dict]) -> None:
        for r in requests:
            key = r["locality"]["neighborhood"]["prompt"]
            if key not in self.unedited:
                self.unedited[key] = self._quality(self.editor.model, r)["locality"]["neighborhood_output"]

    def score(self, model, request: dict) -> Scores:
        q = self._quality(model, request)
        before = self.unedited[request["locality"]["neighborhood"]["prompt"]]
        after = q["locality"]["neighborhood_output"]
        locality = float(np.mean([np.mean(np.equal(a, b)) for a, b in zip(after, before)]))
        return Scores([_mean(q["rewrite_acc"])], [_mean(q["rephrase_acc"])], [locality],
                      [self.generation_match(model, request)])

    def generation_match(self, model, request: dict) -> float:
        """1 if greedy decoding after the prompt starts with the target, word for word."""
        tok = self.editor.tok
        target_ids = tok(" " + request["target_new"], add_special_tokens=False)["input_ids"]
        ids = tok(request["prompt"], return_tensors="pt")["input_ids"].to(self.editor.model.device)
        with cuda_strings_on_cpu(), torch.no_grad():  # SERAC's wrapper moves inputs to cuda:N
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=len(target_ids), do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return float(text.strip().lower().startswith(request["target_new"].strip().lower()))


class Session:
    """Edits through the host's apply function and restores the model between sequences.

    ``model`` is what the last edit returned: the editor's own model for methods that edit in
    place (and DAFNet), SERAC's wrapper (its memory of the sequence's edits) for SERAC.
    """

    def __init__(self, editor) -> None:
        self.editor = editor
        self.model = editor.model
        self.originals: dict[str, torch.Tensor] = {}
        self.serac_memory = None
        if editor.alg_name == "SERAC":
            from benchmarks.methods.trained import SeracMemory
            self.serac_memory = SeracMemory(editor)

    def apply(self, request: dict) -> float:
        e = self.editor
        start = time.perf_counter()
        # keep_original_weight=True: the 2023 methods return the original weights only then; the
        # sequence is restored here, between sequences, not by the host after each edit
        with cuda_strings_on_cpu():
            self.model, weights_copy = e.apply_algo(e.model, e.tok, [request], e.hparams, copy=False,
                                                    return_orig_weights=True, keep_original_weight=True)
        seconds = time.perf_counter() - start
        if self.serac_memory is not None:
            self.serac_memory.carry(self.model)
        if type(weights_copy) is dict:  # DAFNet's UndoEdit is undone by reset() instead
            for name, value in weights_copy.items():  # keep the first (original) copy of each weight
                self.originals.setdefault(name, value.detach().clone())
        return seconds

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.editor.model.named_parameters())
        for name, value in self.originals.items():
            params[name].copy_(value.to(params[name].device))
        self.originals.clear()
        self.model = self.editor.model
        if self.serac_memory is not None:
            self.serac_memory.reset()
        state = attached(self.editor.model)
        if state is not None:
            state.reset()


def run_sequences(editor, records: Sequence[Record], T: int, progress=None) -> dict[str, dict]:
    """Edit ``records`` in sequences of T (len(records) // T of them), restoring between sequences.
    Returns rows for "immediate" and "final" (T > 1) or "single" (T = 1)."""
    evaluator, session = Evaluator(editor), Session(editor)
    requests = [request_of(r) for r in records[: len(records) // T * T]]
    evaluator.remember_unedited(requests)
    immediate, final, seconds = Scores(), Scores(), []
    by_position = [[] for _ in range(T)]  # immediate rewrite of the edit at each place in its sequence
    for start in range(0, len(requests), T):
        chunk = requests[start:start + T]
        for position, request in enumerate(chunk):
            seconds.append(session.apply(request))
            scores = evaluator.score(session.model, request)
            immediate.add(scores)
            by_position[position] += scores.rewrite
            if progress is not None:
                progress.update(1)
        if T > 1:
            for request in chunk:
                final.add(evaluator.score(session.model, request))
        session.restore()
    timing = {"n_edits": len(requests), "sec_per_edit": statistics.median(seconds) if seconds else float("nan")}
    if T == 1:
        return {"single": {**immediate.means(), **timing}}
    return {"immediate": {**immediate.means(), **timing, "rewrite_by_position": [_mean(v) for v in by_position]},
            "final": {**final.means(), **timing}}
