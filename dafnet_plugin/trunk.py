"""The cached trunk: meta-training DAFNet without running the layers it never changes.

While DAFNet trains, the model's weights stay fixed and ΔW enters only at the edited modules, so
every layer below the first edited one computes the same thing for a prompt at every step. Its
output for each training prompt (edit, rephrase, locality) is computed once and cached with the
unedited gradient signals [u, δ]; a step then runs only the edited layers, and the head only at
the answer tokens it scores.

Shapes: k edits, W tokens (padded), H hidden width, n scored answer tokens, V vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .editor import SUBJECT_ROWS, DAFNetEditor, EditBatch, tokenize_edits

Record = dict
KINDS = ("edit", "rephrase", "loc")
_PROMPTS = {"edit": ("prompt", "target_new"), "rephrase": ("rephrase_prompt", "target_new"),
            "loc": ("locality_prompt", "locality_ground_truth")}


class _Reached(Exception):
    """Raised by the capture hook: nothing above the first edited layer needs to run."""


def layer_stack(model: nn.Module, module_names: Sequence[str]) -> tuple[nn.Module, str, int]:
    """The parent and attribute name of the stack of layers holding the edited modules, and the
    index of the first edited layer ("model.layers.27.mlp.up_proj" -> model.model, "layers", 27)."""
    stacks, firsts = set(), []
    for name in module_names:
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if at is None:
            raise ValueError(f"{name}: the cached trunk needs edited modules inside a numbered stack of layers")
        stacks.add(".".join(parts[:at]))
        firsts.append(int(parts[at]))
    if len(stacks) != 1:
        raise ValueError(f"edited modules lie in more than one stack of layers: {sorted(stacks)}")
    parent_name, _, attr = stacks.pop().rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr, min(firsts)


class Trunk:
    """The model seen from its first edited layer up."""

    def __init__(self, editor: DAFNetEditor) -> None:
        self.model = editor.model
        self.parent, self.attr, self.first = layer_stack(self.model, editor.module_names)
        self.layers: nn.ModuleList = getattr(self.parent, self.attr)

    @torch.no_grad()
    def first_layer_input(self, batch: EditBatch) -> torch.Tensor:
        """(k, W, H): what the first edited layer reads for ``batch``; the layers above do not run."""
        seen = {}

        def grab(module, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Reached

        handle = self.layers[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        except _Reached:
            pass
        finally:
            handle.remove()
        return seen["h"]

    @contextmanager
    def _from_first_edited(self, hidden: torch.Tensor) -> Iterator[None]:
        # The model runs its own forward (masks, positions, rotary tables) over a stack cut to the
        # edited layers, whose first one reads ``hidden`` in place of what the embeddings gave.
        top = nn.ModuleList(list(self.layers)[self.first:])

        def inject(module, args, kwargs):
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = top[0].register_forward_pre_hook(inject, with_kwargs=True)
        setattr(self.parent, self.attr, top)
        try:
            yield
        finally:
            setattr(self.parent, self.attr, self.layers)
            handle.remove()

    def answer_logits(self, batch: EditBatch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (n, V) at the positions that predict a labelled token, each one's edit (n,) and
        label (n,). The head, the costliest part of a small model, runs at those positions only."""
        dtype = next(self.model.parameters()).dtype
        with self._from_first_edited(hidden.to(dtype)):
            states = self.model.base_model(input_ids=batch.input_ids,
                                           attention_mask=batch.attention_mask).last_hidden_state
        scored = batch.labels[:, 1:] != -100                                   # (k, W - 1)
        logits = self.model.get_output_embeddings()(states[:, :-1][scored]).float()
        rows = torch.arange(scored.shape[0], device=scored.device)[:, None].expand_as(scored)[scored]
        return logits, rows, batch.labels[:, 1:][scored]


@dataclass
class TrunkCache:
    """Per record and prompt kind: token ids, labels and first-edited-layer inputs; per record and
    edited module: the unedited gradient signal rows. Ragged data is stored flat with offsets."""
    sources: dict[str, list[int]]                 # source name -> [start, end) record indices
    tokens: dict[str, torch.Tensor]               # kind -> (2, total tokens): ids, labels
    hidden: dict[str, torch.Tensor]               # kind -> (total tokens, H)
    token_offsets: dict[str, torch.Tensor]        # kind -> (records + 1,)
    signals: dict[str, torch.Tensor]              # module -> (total rows, D)
    signal_offsets: dict[str, torch.Tensor]       # module -> (records + 1,)

    def __len__(self) -> int:
        return len(next(iter(self.token_offsets.values()))) - 1

    def draw(self, rng: random.Random, k: int) -> list[int]:
        """k distinct records of one source, the source drawn in proportion to its size."""
        names = list(self.sources)
        sizes = [self.sources[n][1] - self.sources[n][0] for n in names]
        start, end = self.sources[rng.choices(names, weights=sizes)[0]]
        return rng.sample(range(start, end), min(k, end - start))

    def batch(self, kind: str, records: Sequence[int], device) -> tuple[EditBatch, torch.Tensor]:
        """The right-padded batch of ``kind`` prompts of ``records`` and its hidden states (k, W, H)."""
        off = self.token_offsets[kind]
        spans = [(int(off[i]), int(off[i + 1])) for i in records]
        width = max(b - a for a, b in spans)
        k, h = len(records), self.hidden[kind].shape[1]
        ids = torch.zeros(k, width, dtype=torch.long)
        labels = torch.full((k, width), -100, dtype=torch.long)
        mask = torch.zeros(k, width, dtype=torch.long)
        hidden = torch.zeros(k, width, h, dtype=torch.float32)
        for row, (a, b) in enumerate(spans):
            ids[row, :b - a], labels[row, :b - a] = self.tokens[kind][0, a:b], self.tokens[kind][1, a:b]
            mask[row, :b - a] = 1
            hidden[row, :b - a] = self.hidden[kind][a:b].float()
        return EditBatch(ids, mask, labels).to(device), hidden.to(device)

    def edit_signals(self, records: Sequence[int], device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``DAFNetEditor.gradient_signals``' result for the edit prompts of ``records``, in order."""
        out = {}
        for name, rows in self.signals.items():
            off = self.signal_offsets[name]
            parts = [rows[int(off[i]):int(off[i + 1])] for i in records]
            edit = torch.cat([torch.full((len(p),), j, dtype=torch.long) for j, p in enumerate(parts)])
            out[name] = (torch.cat(parts).float().to(device), edit.to(device))
        return out

    def save(self, path: Path) -> None:
        partial = path.with_suffix(".partial")
        torch.save({k: v for k, v in vars(self).items()}, partial)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TrunkCache":
        return cls(**torch.load(path, weights_only=True))


def build_trunk_cache(editor: DAFNetEditor, tok, sources: dict[str, Sequence[Record]], max_length: int,
                      dtype: torch.dtype = torch.bfloat16, batch_size: int = 16) -> TrunkCache:
    """Run the unedited model once over every record of ``sources`` (kept in their order)."""
    trunk = Trunk(editor)
    records = [r for recs in sources.values() for r in recs]
    bounds, start = {}, 0
    for name, recs in sources.items():
        bounds[name], start = [start, start + len(recs)], start + len(recs)
    tokens = {k: [] for k in KINDS}
    hidden = {k: [] for k in KINDS}
    lengths = {k: [] for k in KINDS}
    signals = {n: [] for n in editor.module_names}
    counts = {n: [] for n in editor.module_names}
    by_subject = editor.rows in SUBJECT_ROWS
    if by_subject:
        for name, recs in sources.items():
            missing = next((i for i, r in enumerate(recs) if not r.get("subject")), None)
            if missing is not None:
                raise ValueError(f"source {name!r} record {missing} ({recs[missing]['prompt']!r}) has no "
                                 f"'subject', which rows: {editor.rows} needs")
    for at in tqdm(range(0, len(records), batch_size), desc="caching the trunk", unit="batch"):
        chunk = records[at:at + batch_size]
        for kind, (prompt, answer) in _PROMPTS.items():
            # only the edit prompts give gradient signals, so only they need their subject's tokens
            subjects = [r["subject"] for r in chunk] if by_subject and kind == "edit" else None
            batch = tokenize_edits(tok, [r[prompt] for r in chunk], [r[answer] for r in chunk], max_length, subjects)
            batch = batch.to(editor.edit_lrs.device)
            h = trunk.first_layer_input(batch)
            for row in range(len(chunk)):
                n = int(batch.attention_mask[row].sum())
                tokens[kind].append(torch.stack([batch.input_ids[row, :n], batch.labels[row, :n]]).cpu())
                hidden[kind].append(h[row, :n].to(dtype).cpu())
                lengths[kind].append(n)
            if kind == "edit":
                for name, (x, edit) in editor.gradient_signals(batch).items():
                    for row in range(len(chunk)):
                        rows = x[edit == row]
                        signals[name].append(rows.to(dtype).cpu())
                        counts[name].append(len(rows))

    def offsets(ns: list[int]) -> torch.Tensor:
        return torch.tensor([0] + ns).cumsum(0)

    return TrunkCache(bounds, {k: torch.cat(v, 1) for k, v in tokens.items()},
                      {k: torch.cat(v) for k, v in hidden.items()}, {k: offsets(v) for k, v in lengths.items()},
                      {n: torch.cat(v) for n, v in signals.items()}, {n: offsets(v) for n, v in counts.items()})


def cache_key(model_path: str, module_names: Sequence[str], sources: dict[str, Sequence[Record]],
              max_length: int, dtype: str, rows: str = "all") -> str:
    """What the cache depends on: the model, the edited layers and token rows, the records and their
    tokenisation."""
    blob = hashlib.sha256()
    config = Path(model_path) / "config.json"
    stamp = config.stat().st_mtime_ns if config.exists() else None
    blob.update(json.dumps([str(model_path), stamp, list(module_names), max_length, dtype, rows]).encode())
    for name, recs in sources.items():
        blob.update(name.encode())
        for r in recs:
            fields = [r.get(k) for p in _PROMPTS.values() for k in p]
            blob.update(json.dumps(fields + ([r.get("subject")] if rows in SUBJECT_ROWS else [])).encode())
    return blob.hexdigest()[:16]


def second_moments(editor: DAFNetEditor, cache: TrunkCache, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Uncentred second moment E[u uᵀ] of each edited module's inputs over the cached edit and
    locality prompts (the unedited model), for the preconditioner."""
    trunk, device = Trunk(editor), editor.edit_lrs.device
    sums = {n: 0 for n in editor.module_names}
    count = {n: 0 for n in editor.module_names}
    with torch.no_grad(), editor.deltas_off():
        for kind in ("edit", "loc"):
            for at in range(0, len(cache), batch_size):
                batch, hidden = cache.batch(kind, range(at, min(at + batch_size, len(cache))), device)
                editor._captured = {}
                try:
                    trunk.answer_logits(batch, hidden)
                    captured = editor._captured
                finally:
                    editor._captured = None
                keep = batch.attention_mask.bool()
                for name, (u, _) in captured.items():
                    u = u[keep].double()
                    sums[name] = sums[name] + u.T @ u
                    count[name] += len(u)
    return {n: (sums[n] / count[n]).float() for n in editor.module_names}


def cached_sequence_losses(editor: DAFNetEditor, trunk: Trunk, cache: TrunkCache, records: Sequence[int],
                           scored: Sequence[int]) -> dict[str, torch.Tensor]:
    """``training.sequence_losses`` from the cache: edit the fresh model with the signals of all
    ``records`` at once (with graph), then score the prompts of ``scored`` (a subset of them)."""
    device = editor.edit_lrs.device
    batches = {kind: cache.batch(kind, scored, device) for kind in KINDS}
    with torch.no_grad(), editor.deltas_off():
        base, _, _ = trunk.answer_logits(*batches["loc"])
    editor.reset()
    editor.edit_signals(cache.edit_signals(records, device), len(records), detach_past=False)
    try:
        def nll(kind: str) -> torch.Tensor:
            logits, rows, labels = trunk.answer_logits(*batches[kind])
            per_token = F.cross_entropy(logits, labels, reduction="none")
            per_edit = per_token.new_zeros(len(scored)).index_add(0, rows, per_token)
            return (per_edit / torch.bincount(rows, minlength=len(scored)).clamp(min=1)).mean()

        post, _, _ = trunk.answer_logits(*batches["loc"])
        pre, post = base.log_softmax(-1), post.log_softmax(-1)
        kl = (pre.exp() * (pre - post)).sum(-1).mean() if len(pre) else post.new_zeros(())
        return {"edit": nll("edit"), "rephrase": nll("rephrase"), "loc": kl}
    finally:
        editor.reset()
