"""DAFNet state on a causal LM: hooks on the edited modules, gradient signals, ΔW, memory, restore.

The edited model keeps its weights untouched; each edited module's forward adds ``input @ ΔW``.
Gradient signals come from the same model with those additions switched off, so there is no
second copy of the model.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import DAFNetNetwork, NetworkConfig

if TYPE_CHECKING:  # hparams reads ROWS from here
    from .hparams import DAFNetHyperParams


# Which token rows of an edit feed the network and carry its update: every token of prompt and
# target (the authors'), the subject's tokens, the subject's last token (where MEMIT writes) or the
# prompt's last token (the one that predicts the target).
ROWS = ("all", "subject", "subject_last", "last")
SUBJECT_ROWS = ("subject", "subject_last")


@dataclass
class EditBatch:
    """k edits tokenised for the model: labels are -100 except on the target tokens."""
    input_ids: torch.Tensor       # (k, T)
    attention_mask: torch.Tensor  # (k, T)
    labels: torch.Tensor          # (k, T)
    subject_mask: torch.Tensor | None = None  # (k, T) bool, the subject's tokens; None when unknown

    def to(self, device: torch.device | str) -> "EditBatch":
        subject = None if self.subject_mask is None else self.subject_mask.to(device)
        return EditBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), subject)


def subject_tokens(tok, prompt: str, subject: str) -> tuple[int, int]:
    """The token span [start, end) of ``subject``'s first occurrence in ``prompt``, counted as ROME
    counts it: by tokenising the prompt up to the subject's start and end."""
    at = prompt.find(subject)
    if at < 0 or not subject.strip():
        raise ValueError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    # a byte-level BPE reads the space before a word as part of the word's first token
    prefix = prompt[:at - 1] if prompt[:at].endswith(" ") else prompt[:at]
    start = len(tok(prefix)["input_ids"])
    end = len(tok(prompt[:at + len(subject)])["input_ids"])
    return start, max(end, start + 1)


def tokenize_edits(tok, prompts: Sequence[str], targets: Sequence[str], max_length: int = 128,
                   subjects: Sequence[str] | None = None) -> EditBatch:
    """Tokenise ``prompt + " " + target`` (EasyEdit's convention), right-padded, loss on the target.
    With ``subjects``, the batch also marks each subject's tokens in its prompt. A pair longer than
    ``max_length`` is an error: cutting it would drop target tokens, and with them what the edit is for."""
    rows, labels, spans = [], [], []
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        full = tok(f"{prompt} {target}")["input_ids"]
        # at least one target token, even where the tokenizer merges the target into the prompt's end
        n_prompt = min(len(tok(prompt)["input_ids"]), len(full) - 1)
        if len(full) > max_length:
            raise ValueError(f"prompt {prompt!r} with target {target!r} is {len(full)} tokens ({n_prompt} + "
                             f"{len(full) - n_prompt}), more than max_length {max_length}: raise max_length "
                             f"in the hparams YAML to at least {len(full)}")
        rows.append(full)
        labels.append([-100] * n_prompt + full[n_prompt:])
        if subjects is not None:
            start, end = subject_tokens(tok, prompt, subjects[i])
            if end > n_prompt:
                raise ValueError(f"subject {subjects[i]!r} of the prompt {prompt!r} ends past the "
                                 f"prompt's {n_prompt} tokens")
            spans.append((start, end))
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    subject_mask = None
    if subjects is not None:
        position = torch.arange(width)
        subject_mask = torch.stack([(position >= a) & (position < b) for a, b in spans])
    return EditBatch(
        torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        torch.tensor([l + [-100] * (width - len(l)) for l in labels]),
        subject_mask,
    )


def edit_subjects(records: Sequence[dict], rows: str) -> list[str] | None:
    """Each record's (or request's) subject where ``rows`` reads the subject's tokens; else None, since
    only then does ``tokenize_edits`` need them."""
    return [r["subject"] for r in records] if rows in SUBJECT_ROWS else None


def token_rows(batch: EditBatch, rows: str) -> torch.Tensor:
    """(k, T) bool: the token rows of each edit that ``rows`` (one of ROWS) selects."""
    present = batch.attention_mask.bool()
    if rows == "all":
        return present
    position = torch.arange(present.shape[1], device=present.device).expand_as(present)
    if rows == "last":  # the position just before the first target token predicts it
        first_target = torch.where(batch.labels != -100, position, present.shape[1]).min(1).values
        return position == (first_target - 1).clamp(min=0).unsqueeze(1)
    if rows not in SUBJECT_ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}, not {rows!r}")
    if batch.subject_mask is None:
        raise ValueError(f"rows: {rows} needs each edit's subject (tokenize_edits(..., subjects=...))")
    subject = batch.subject_mask & present
    if rows == "subject":
        return subject
    last = torch.where(subject, position, -1).max(1).values
    return subject & (position == last.unsqueeze(1))


def per_edit_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of each row's labelled tokens, (k,). Per-edit means keep an edit's gradient
    independent of the other edits in the batch."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2 stores its weight as (d_in, d_out)
        return tuple(module.weight.shape)
    raise TypeError(f"DAFNet edits nn.Linear or GPT-2 Conv1D modules, not {type(module).__name__}")


class DAFNetEditor(nn.Module):
    """DAFNet attached to one model. Its own parameters are the networks and the per-module edit
    learning rates; the model is referenced, never registered, so it is not in ``state_dict``."""

    def __init__(self, model: nn.Module, module_names: Sequence[str], cfg: NetworkConfig,
                 init_edit_lr: float = 1e-4, memory_limit: int = 0, precondition: bool = False,
                 protect_keys: float = 0.0, edit_scale: float = 1.0, rows: str = "all") -> None:
        super().__init__()
        if rows not in ROWS:
            raise ValueError(f"rows must be one of {', '.join(ROWS)}, not {rows!r}")
        self.rows = rows
        self.__dict__["model"] = model
        named = dict(model.named_modules())
        # EasyEdit names edited weights ("...mlp.c_fc.weight"); DAFNet edits their modules
        module_names = [n.removesuffix(".weight") for n in module_names]
        missing = [n for n in module_names if n not in named]
        if missing:
            raise KeyError(f"modules not found in {type(model).__name__}: {missing}")
        self.module_names = list(module_names)
        self.edited = {n: named[n] for n in self.module_names}
        self.memory_limit = memory_limit  # 0 keeps every past edit, as the authors do
        groups: dict[tuple[int, int], list[str]] = {}
        for name in self.module_names:
            groups.setdefault(_shape(self.edited[name]), []).append(name)
        self.networks = nn.ModuleDict({f"{i}x{o}": DAFNetNetwork(i, o, cfg, len(names))
                                       for (i, o), names in groups.items()})
        self.route = {name: (f"{i}x{o}", mode) for (i, o), names in groups.items()
                      for mode, name in enumerate(names)}
        self.edit_lrs = nn.Parameter(torch.full((len(self.module_names),), float(init_edit_lr)))
        # Optional: each update's input side is multiplied by the inverse second moment of the
        # module's inputs (as MEMIT does), so summed updates act on their own keys and little on
        # others. Identity until estimate_preconditioners() sets it; archives carry it.
        self.preconditioners = nn.ModuleDict(
            {str(i): _Preconditioner(_shape(self.edited[n])[0]) for i, n in enumerate(self.module_names)}
        ) if precondition else None
        # Optional, at editing time: each edit's keys (its module inputs) join the preconditioner of
        # the edits after it, with this weight, as MEMIT's sequential statistics and AlphaEdit's
        # null space keep earlier keys: a later update then writes little where an earlier edit
        # (and what shares its keys) reads. 0 leaves the preconditioner fixed.
        self.protect_keys = protect_keys
        self.edit_scale = edit_scale  # a plain factor on every update (1 in training)
        self.protected: dict[str, torch.Tensor | None] = {}
        device = next(model.parameters()).device
        self.to(device)
        self.deltas: dict[str, torch.Tensor | None] = {}
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.n_edits = 0
        self.merges = 0  # merge() calls so far: a snapshot from before one cannot be restored
        self.reset()
        self._apply_deltas = True
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._hooks = [self.edited[n].register_forward_hook(self._make_hook(n)) for n in self.module_names]

    # ----- hooks -------------------------------------------------------------------------
    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._captured is not None:
                self._captured[name] = (args[0].detach(), output)
            delta = self.deltas[name]
            if self._apply_deltas and delta is not None:
                return output + args[0] @ delta.to(args[0].dtype)
            return None
        return hook

    def remove(self) -> None:
        """Detach from the model: no hook stays behind."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @contextmanager
    def deltas_off(self) -> Iterator[None]:
        """The unedited model, without a copy of it."""
        previous, self._apply_deltas = self._apply_deltas, False
        try:
            yield
        finally:
            self._apply_deltas = previous

    # ----- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every edit: ΔW and the memory of past edits."""
        for name in self.module_names:
            net = self.networks[self.route[name][0]]
            self.deltas[name] = None
            self.memory[name] = net.empty_memory(self.edit_lrs.device)
            self.protected[name] = None
        self.n_edits = 0

    def snapshot(self) -> dict:
        """The sequence state now; ΔW and memory are replaced, never changed in place, so
        references suffice."""
        return {"deltas": dict(self.deltas), "memory": {n: list(m) for n, m in self.memory.items()},
                "n_edits": self.n_edits, "protected": dict(self.protected), "merges": self.merges}

    def restore(self, snap: dict) -> None:
        if snap.get("merges", 0) != self.merges:
            # its ΔW now lives in the model's weights too: restoring it would apply it twice
            raise RuntimeError("this snapshot was taken before merge() folded ΔW into the model's weights; "
                               "restore cannot undo a merge (reload the model's weights instead)")
        self.deltas = dict(snap["deltas"])
        self.protected = dict(snap["protected"])
        self.memory = {n: list(m) for n, m in snap["memory"].items()}
        self.n_edits = snap["n_edits"]

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the model's weights and clear it; the memory of past edits stays, so
        later edits still attend to them."""
        for name, module in self.edited.items():
            delta = self.deltas[name]
            if delta is None:
                continue
            module.weight += (delta.T if isinstance(module, nn.Linear) else delta).to(module.weight.dtype)
            self.deltas[name] = None
        self.merges += 1

    # ----- editing -----------------------------------------------------------------------
    def gradient_signals(self, batch: EditBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module: token rows [u, δ] (N, D) in float32 of the unedited model and each row's edit
        index (N,), for the rows that ``self.rows`` selects. Rows where u or δ is all zero carry no
        signal and are dropped."""
        batch = batch.to(self.edit_lrs.device)
        weights = [m.weight for m in self.edited.values()]
        flags = [w.requires_grad for w in weights]
        self._captured = {}
        try:
            with torch.enable_grad(), self.deltas_off():
                for w in weights:  # makes every edited module's output part of the graph
                    w.requires_grad_(True)
                logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                # fp16 gradients of small losses underflow to zero; scale up, then back down
                scale = 1024.0 if logits.dtype == torch.float16 else 1.0
                loss = per_edit_nll(logits, batch.labels).sum() * scale
                names = list(self._captured)
                grads = torch.autograd.grad(loss, [self._captured[n][1] for n in names])
        finally:
            for w, f in zip(weights, flags):
                w.requires_grad_(f)
            captured, self._captured = self._captured, None
        keep = token_rows(batch, self.rows).flatten()
        edit_of_row = torch.arange(batch.input_ids.shape[0], device=keep.device).repeat_interleave(batch.input_ids.shape[1])
        signals = {}
        for name, grad in zip(names, grads):
            u = captured[name][0].flatten(0, -2).float()
            d = grad.flatten(0, -2).float() / scale
            rows = keep & (u != 0).any(-1) & (d != 0).any(-1)
            signals[name] = (torch.cat([u[rows], d[rows]], -1), edit_of_row[rows])
        return signals

    def edit(self, batch: EditBatch, detach_past: bool = True) -> None:
        """Add the k edits of ``batch`` to the running sequence, in order (causally)."""
        self.edit_signals(self.gradient_signals(batch), batch.input_ids.shape[0], detach_past)

    def edit_signals(self, signals: dict[str, tuple[torch.Tensor, torch.Tensor]], k: int,
                     detach_past: bool = True) -> None:
        """``edit`` from gradient signals already computed (``gradient_signals``' form), e.g. cached."""
        for index, name in enumerate(self.module_names):
            key, mode = self.route[name]
            x, edit_index = signals[name]
            precondition = None if self.preconditioners is None else self.preconditioners[str(index)].inverse
            earlier = None
            if self.protect_keys > 0:
                precondition, earlier = self._protect(name, precondition, x[:, :self.networks[key].d_in], edit_index)
            update, gamma, vectors = self.networks[key](x, edit_index, k, mode, self.memory[name], precondition,
                                                        earlier)
            step = self.edit_scale * self.edit_lrs[index] * update
            past = self.deltas[name]
            if past is not None:
                step = gamma * (past.detach() if detach_past else past) + step
            self.deltas[name] = step
            self.memory[name] = [self._capped(torch.cat([m, v], 0)) for m, v in zip(self.memory[name], vectors)]
        self.n_edits += k

    @torch.no_grad()
    def _protect(self, name: str, base: torch.Tensor | None, keys: torch.Tensor, edit_index: torch.Tensor
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Edit t of module ``name`` is preconditioned by P_t = (P⁻¹ + β Σ_{s<t} K̄_s)⁻¹, P the
        preconditioner after the earlier calls and K̄_s = K_sᵀK_s · d / ‖K_s‖² the keys of edit s
        (its rows of ``keys``, (N, d)), scaled to a mean diagonal of 1 as P₀⁻¹ has.

        With V the scaled keys of this call (rows in edit order), L the Cholesky factor of
        I + V P Vᵀ and Y = L⁻¹ V P, the leading rows of Y belong to the leading edits, so
        x P_t = x P − Σ_{rows j of edits s < t} (x·y_j) y_j for every t at once: returns P and
        (Y, each row's edit), and keeps P − YᵀY for the next call (Woodbury; float64)."""
        p = self.protected[name]
        if p is None:
            p = (base if base is not None else torch.eye(keys.shape[1], device=keys.device)).double()
        if not len(keys):  # no row carried a signal: nothing to add
            self.protected[name] = p
            return p.float(), None
        k = int(edit_index.max()) + 1
        v = keys.double()
        norms = v.new_zeros(k).index_add(0, edit_index, v.square().sum(-1)).sqrt().clamp(min=1e-12)
        v = v * ((self.protect_keys * v.shape[1]) ** 0.5 / norms)[edit_index].unsqueeze(-1)
        vp = v @ p                                                                   # (N, d)
        chol = torch.linalg.cholesky(torch.eye(len(v), dtype=v.dtype, device=v.device) + vp @ v.T)
        y = torch.linalg.solve_triangular(chol, vp, upper=False)                    # (N, d)
        self.protected[name] = p - y.T @ y
        return p.float(), (y.float(), edit_index)

    @torch.no_grad()
    def estimate_preconditioners(self, second_moments: dict[str, torch.Tensor], damping: float) -> None:
        """Set each module's preconditioner to (C / c̄ + damping·I)⁻¹, C its inputs' uncentred second
        moment (d_in, d_in) and c̄ C's mean diagonal: scaled so that the edit learning rates keep
        their meaning; ``damping`` keeps rare input directions from being blown up."""
        if self.preconditioners is None:
            raise RuntimeError("this editor was built with precondition: false")
        for index, name in enumerate(self.module_names):
            c = second_moments[name].double()
            c = c / c.diagonal().mean() + damping * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
            self.preconditioners[str(index)].inverse.copy_(torch.linalg.inv(c).float())

    def _capped(self, memory: torch.Tensor) -> torch.Tensor:
        return memory[-self.memory_limit:] if self.memory_limit else memory

    # ----- archives ----------------------------------------------------------------------
    def load_archive(self, path: str) -> None:
        """Load trained weights (``torch.load(weights_only=True)``); shapes must fit this config."""
        state = torch.load(path, map_location=self.edit_lrs.device, weights_only=True)
        state = state.get("model", state)  # a training checkpoint holds the weights under "model"
        own = self.state_dict()
        problems = [f"missing {k}" for k in own if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        problems += [f"{k}: archive {tuple(v.shape)} vs config {tuple(own[k].shape)}"
                     for k, v in state.items() if k in own and v.shape != own[k].shape]
        if problems:
            raise ValueError(f"archive {path} does not fit this DAFNet config: " + "; ".join(problems[:8]))
        self.load_state_dict(state)


class _Preconditioner(nn.Module):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.register_buffer("inverse", torch.eye(d_in))


def attach(model: nn.Module, hparams: DAFNetHyperParams, seed: int | None = None) -> DAFNetEditor:
    """The DAFNet editor living on ``model``, created (and its archive loaded) on first use.

    It is kept in the model's ``__dict__``, not as a submodule, so the model's parameters,
    ``state_dict`` and size stay those of the base model; a call with other hparams replaces it.
    ``seed`` makes the networks' initialisation repeatable without touching the global RNG.
    """
    key = (tuple(hparams.inner_params), hparams.network_config(), hparams.init_edit_lr, hparams.memory_limit,
           hparams.precondition, hparams.protect_keys, hparams.edit_scale, hparams.rows, hparams.archive)
    editor = attached(model)
    if editor is not None and editor.hparams_key == key:
        return editor
    if editor is not None:
        editor.remove()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        editor = DAFNetEditor(model, hparams.inner_params, hparams.network_config(), hparams.init_edit_lr,
                              hparams.memory_limit, hparams.precondition, hparams.protect_keys,
                              hparams.edit_scale, hparams.rows).eval()
    if hparams.archive:
        editor.load_archive(hparams.archive)
    editor.hparams_key = key
    model.__dict__["_dafnet_editor"] = editor
    return editor


def attached(model: nn.Module) -> DAFNetEditor | None:
    """The DAFNet editor on ``model`` (to reset, merge or inspect it), or None."""
    return model.__dict__.get("_dafnet_editor")
