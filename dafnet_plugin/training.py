"""Meta-training of DAFNet, pure torch: sequences of k edits, the authors' losses and curriculum.

Each step draws one sequence of k edits (from one data source), processes it causally at once,
and asks three things of the edited model: the edit targets after the edit prompts, the same
targets after rephrased prompts, and unchanged predictions on unrelated (locality) prompts.
The data are records in EasyEdit's form: prompt, target_new, rephrase_prompt, locality_prompt,
locality_ground_truth.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .default_model import cache_root
from .editor import DAFNetEditor, edit_subjects, per_edit_nll, tokenize_edits
from .hparams import DAFNetTrainingHparams
from .training_plot import plot_training_log
from .trunk import Trunk, TrunkCache, build_trunk_cache, cache_key, cached_sequence_losses, second_moments

Record = dict
SequenceSource = Callable[[random.Random, int], Sequence[Record]]


# The training settings that shape a run, recorded in each checkpoint (plain values, so that it still
# loads with weights_only=True): a resume names the ones that changed instead of mixing two runs unsaid.
RUN_SETTINGS = ("lr", "lr_lr", "max_sequence", "curriculum", "curriculum_patience", "curriculum_growth",
                "curriculum_min_step", "curriculum_max_wait", "loss_ema", "cedit", "crephrase", "cloc",
                "grad_clip", "max_length", "seed", "trunk_cache", "trunk_pool", "score_edits", "rows",
                "inner_params", "fusion", "precondition", "n_layers", "inner_dim", "ffn_dim", "att_dim",
                "att_heads", "gate_dim", "gate_heads")


def run_settings(hp: DAFNetTrainingHparams) -> dict:
    return {name: list(value) if isinstance(value, (list, tuple)) else value
            for name in RUN_SETTINGS for value in [getattr(hp, name)]}


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops, and the last good checkpoint stays as it was."""


@dataclass
class Curriculum:
    """k is drawn uniformly from 1..k_max; k_max grows when the smoothed loss stops improving, or,
    with ``max_wait`` > 0, at the latest ``max_wait`` steps after it last grew: a loss that keeps
    improving slowly (short CPU runs) would otherwise never let training see a sequence."""
    cap: int
    patience: int
    growth: float = 0.25
    min_step: int = 10
    ema_decay: float = 0.01
    max_wait: int = 0
    k_max: int = 1
    ema: float = math.nan
    best: float = math.inf
    best_step: int = 0
    grown_step: int = 0

    def sample(self, rng: random.Random) -> int:
        return rng.randint(1, self.k_max)

    def update(self, loss: float, step: int) -> None:
        self.ema = loss if math.isnan(self.ema) else self.ema + self.ema_decay * (loss - self.ema)
        if self.ema < self.best:
            self.best, self.best_step = self.ema, step
        stalled = step - self.best_step >= self.patience
        overdue = self.max_wait > 0 and step - self.grown_step >= self.max_wait
        if (stalled or overdue) and self.k_max < self.cap:
            self.k_max = min(self.cap, self.k_max + max(round(self.growth * self.k_max), self.min_step))
            # longer sequences are harder: the loss is watched afresh from here
            self.best, self.best_step, self.grown_step = math.inf, step, step


def locality_kl(base_logits: torch.Tensor, post_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(unedited || edited) of the next-token distributions at the answer tokens."""
    mask = (labels[:, 1:] != -100).float()
    pre = base_logits[:, :-1].float().log_softmax(-1)
    post = post_logits[:, :-1].float().log_softmax(-1)
    kl = (pre.exp() * (pre - post)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def sequence_losses(editor: DAFNetEditor, tok, records: Sequence[Record], max_length: int) -> dict[str, torch.Tensor]:
    """Edit the fresh model with the whole sequence at once (with graph) and score it."""
    model = editor.model
    targets = [r["target_new"] for r in records]
    edit = tokenize_edits(tok, [r["prompt"] for r in records], targets, max_length, edit_subjects(records, editor.rows))
    rephrase = tokenize_edits(tok, [r["rephrase_prompt"] for r in records], targets, max_length)
    loc = tokenize_edits(tok, [r["locality_prompt"] for r in records],
                         [r["locality_ground_truth"] for r in records], max_length)
    device = editor.edit_lrs.device
    edit, rephrase, loc = edit.to(device), rephrase.to(device), loc.to(device)
    with torch.no_grad(), editor.deltas_off():
        base = model(input_ids=loc.input_ids, attention_mask=loc.attention_mask).logits
    editor.reset()
    editor.edit(edit, detach_past=False)
    try:
        def nll(batch):
            return per_edit_nll(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                batch.labels).mean()
        post = model(input_ids=loc.input_ids, attention_mask=loc.attention_mask).logits
        return {"edit": nll(edit), "rephrase": nll(rephrase), "loc": locality_kl(base, post, loc.labels)}
    finally:
        editor.reset()  # the next sequence starts fresh; this also frees the graph's ΔW


@torch.no_grad()
def dev_scores(editor: DAFNetEditor, tok, records: Sequence[Record], max_length: int) -> dict[str, float]:
    """The final protocol on ``records``, cheaply: one sequence of all of them (edited at once, which
    equals one by one), then each edit's target accuracy after its prompt (teacher-forced, as the
    host's rewrite_acc) and the share of locality-answer tokens whose argmax is the unedited model's.
    The editor's sequence is empty afterwards."""
    model, device = editor.model, editor.edit_lrs.device
    edit = tokenize_edits(tok, [r["prompt"] for r in records], [r["target_new"] for r in records],
                          max_length, edit_subjects(records, editor.rows)).to(device)
    loc = tokenize_edits(tok, [r["locality_prompt"] for r in records],
                         [r["locality_ground_truth"] for r in records], max_length).to(device)

    def predictions(batch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits[:, :-1].argmax(-1), batch.labels[:, 1:] != -100

    with editor.deltas_off():
        loc_before, _ = predictions(loc)
    editor.reset()
    editor.edit(edit)
    try:
        guess, scored = predictions(edit)
        hits = ((guess == edit.labels[:, 1:]) & scored).sum(1) / scored.sum(1).clamp(min=1)
        loc_after, loc_scored = predictions(loc)
        kept = ((loc_after == loc_before) & loc_scored).sum(1) / loc_scored.sum(1).clamp(min=1)
        return {"rewrite": hits.mean().item(), "locality": kept.mean().item()}
    finally:
        editor.reset()


class DAFNetTrainer:
    """Trains the networks and per-module edit learning rates of ``editor``; checkpoints hold
    those weights, the normalisation statistics, the optimizers and the curriculum, nothing
    pickled (they load with ``torch.load(weights_only=True)``), in EasyEdit's archive layout
    (``model``, ``opt``, ``lr_opt``) so the host trainer can read them too."""

    def __init__(self, editor: DAFNetEditor, tok, hp: DAFNetTrainingHparams, draw: SequenceSource,
                 checkpoint: str | os.PathLike, trunk_cache: TrunkCache | None = None,
                 dev_records: Sequence[Record] = ()) -> None:
        """``draw`` gives the records of a sequence; with ``trunk_cache`` (see trunk.py) the
        sequences are drawn from the cached records instead and each step runs the edited layers only.
        Every ``hp.dev_every`` steps the log records ``dev_scores`` of the first ``hp.dev_edits``
        ``dev_records`` (records training never draws), so a run shows whether more steps still help."""
        self.editor, self.tok, self.hp, self.draw = editor, tok, hp, draw
        self.dev_records = list(dev_records)[:hp.dev_edits]
        # Only DAFNet learns: gradients for the model's own weights would cost as much as the rest
        # of the backward pass and never be used.
        editor.model.requires_grad_(False)
        self.cache = trunk_cache
        self.trunk = Trunk(editor) if trunk_cache is not None else None
        self.checkpoint = Path(checkpoint)
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.checkpoint.with_suffix(".log.jsonl")
        networks = [p for n, p in editor.named_parameters() if n != "edit_lrs"]
        self.opt = torch.optim.Adam(networks, lr=hp.lr)
        self.lr_opt = torch.optim.Adam([editor.edit_lrs], lr=hp.lr_lr)
        self.curriculum = Curriculum(hp.max_sequence, hp.curriculum_patience, hp.curriculum_growth,
                                     hp.curriculum_min_step, hp.loss_ema, hp.curriculum_max_wait,
                                     k_max=hp.max_sequence if hp.curriculum == "uniform" else 1)
        self.step = 0
        if self.checkpoint.exists():
            self.resume(self.checkpoint)

    def state_dict(self) -> dict:
        return {"model": self.editor.state_dict(), "opt": self.opt.state_dict(),
                "lr_opt": self.lr_opt.state_dict(), "curriculum": asdict(self.curriculum), "step": self.step,
                "settings": run_settings(self.hp)}

    def save(self) -> None:
        partial = self.checkpoint.with_suffix(".partial")
        torch.save(self.state_dict(), partial)
        os.replace(partial, self.checkpoint)  # an interrupted save never spoils the last good one

    def resume(self, path: str | os.PathLike) -> None:
        """Go on from the checkpoint at ``path``. Where this run's settings differ from the ones it
        records, they are named once on stderr and the run goes on with this run's (a checkpoint from
        before the record resumes with its own curriculum and learning rates, as it always did)."""
        state = torch.load(path, map_location=self.editor.edit_lrs.device, weights_only=True)
        saved, current = state.get("settings"), run_settings(self.hp)
        changed = [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in current.items()
                   if saved is not None and saved.get(name) != value]
        try:
            self.editor.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"{path}: the checkpoint's networks do not fit this run's "
                             f"({'; '.join(changed) or 'no recorded setting differs'}): set them back "
                             f"or train into another checkpoint path") from error
        self.opt.load_state_dict(state["opt"])
        self.lr_opt.load_state_dict(state["lr_opt"])
        fresh = self.curriculum
        self.curriculum = Curriculum(**{**state["curriculum"], "max_wait": fresh.max_wait})
        self.step = state["step"]
        if changed:
            # the optimizers and the curriculum just took the saved values: this run's go back in
            for optimizer, lr in ((self.opt, self.hp.lr), (self.lr_opt, self.hp.lr_lr)):
                for group in optimizer.param_groups:
                    group["lr"] = lr
            progress = self.curriculum
            k_max = fresh.k_max if self.hp.curriculum == "uniform" else min(progress.k_max, fresh.cap)
            self.curriculum = Curriculum(**{**asdict(fresh), "k_max": k_max, "ema": progress.ema,
                                            "best": progress.best, "best_step": progress.best_step,
                                            "grown_step": progress.grown_step})
            print(f"warning: resuming {path} at step {self.step} with changed training settings: "
                  f"{'; '.join(changed)}; the run goes on with the new ones", file=sys.stderr)

    def train_step(self, k: int | None = None) -> dict[str, float]:
        """One sequence of k edits (default: drawn by the curriculum)."""
        # a generator per step, seeded by the step, makes a resumed run draw what the
        # uninterrupted one would have
        rng = random.Random(self.hp.seed * 1_000_003 + self.step)
        k = self.curriculum.sample(rng) if k is None else k
        self.editor.train()
        if self.cache is None:
            records = self.draw(rng, k)
            losses = sequence_losses(self.editor, self.tok, records, self.hp.max_length)
        else:
            records = self.cache.draw(rng, k)
            scored = sorted(rng.sample(records, min(len(records), self.hp.score_edits)))
            losses = cached_sequence_losses(self.editor, self.trunk, self.cache, records, scored)
        total = self.hp.cedit * losses["edit"] + self.hp.crephrase * losses["rephrase"] + self.hp.cloc * losses["loc"]
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"non-finite loss at step {self.step + 1} ({ {n: v.item() for n, v in losses.items()} }); "
                f"the last good checkpoint is {self.checkpoint if self.checkpoint.exists() else 'not written yet'}")
        self.opt.zero_grad()
        self.lr_opt.zero_grad()
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in (self.opt, self.lr_opt) for group in g.param_groups
                                                    for p in group["params"]], self.hp.grad_clip)
        self.opt.step()
        self.lr_opt.step()
        self.step += 1
        self.curriculum.update(total.item(), self.step)
        return {"step": self.step, "k": len(records), "k_max": self.curriculum.k_max, "loss": total.item(),
                **{f"loss/{n}": v.item() for n, v in losses.items()}, "grad_norm": grad_norm.item()}

    def run(self, max_iters: int | None = None) -> list[dict]:
        """Train up to ``max_iters`` steps in all (resumed steps count), checkpointing on the way."""
        max_iters = self.hp.max_iters if max_iters is None else max_iters
        history = []
        start = time.time()
        with tqdm(total=max_iters, initial=self.step, desc="DAFNet training") as bar, \
                self.log_path.open("a") as log:
            while self.step < max_iters:
                step_start = time.time()
                info = self.train_step()
                now = time.time()
                # a resumed run logs its own clock: run_started tells the runs apart when budgets are summed
                info.update(seconds=round(now - start, 2), step_s=round(now - step_start, 2),
                            run_started=round(start, 2))
                if self.dev_records and self.hp.dev_every and self.step % self.hp.dev_every == 0:
                    self.editor.eval()  # frozen normalisation statistics, as at editing time
                    dev = dev_scores(self.editor, self.tok, self.dev_records, self.hp.max_length)
                    info.update({f"dev/{n}": round(v, 4) for n, v in dev.items()}, dev_edits=len(self.dev_records))
                history.append(info)
                log.write(json.dumps(info) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.3f}", k_max=info["k_max"])
                if self.step % self.hp.model_save_pt == 0 or self.step == max_iters:
                    self.save()
                    plot_training_log(self.log_path, self.checkpoint.with_suffix(".training.png"))
        self.editor.eval()
        return history


def distinct_pool(sources: dict[str, Sequence[Record]], size: int) -> dict[str, list[Record]]:
    """The first records of each source, ``size`` in all, shared between the sources by their sizes,
    each edit (prompt, target) once: DAFSet's CounterFact part holds the same records as
    counterfact-train, so pooling the two by position alone would cache every fact twice."""
    total = sum(len(s) for s in sources.values())
    seen, pool = set(), {}
    for name, src in sources.items():
        quota, taken = max(1, round(size * len(src) / total)), []
        for i in range(len(src)):
            if len(taken) == quota:
                break
            record = src[i]
            key = (record["prompt"], record["target_new"])
            if key not in seen:
                seen.add(key)
                taken.append(record)
        pool[name] = taken
    return pool


def trunk_cache_for(editor: DAFNetEditor, tok, sources: dict[str, Sequence[Record]], hp: DAFNetTrainingHparams,
                    cache_dir: str | os.PathLike | None = None) -> TrunkCache:
    """The trunk cache of the first ``hp.trunk_pool`` records of ``sources`` (shared between them by
    size), loaded from ``<cache root>/trunk`` or built there; with ``hp.precondition`` the
    editor's preconditioners are estimated from it too."""
    pool = distinct_pool(sources, hp.trunk_pool)
    key = cache_key(hp.model_name, editor.module_names, pool, hp.max_length, hp.cache_dtype, editor.rows)
    path = Path(cache_dir or cache_root() / "trunk") / f"{key}.pt"
    if path.exists():
        cache = TrunkCache.load(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = build_trunk_cache(editor, tok, pool, hp.max_length, getattr(torch, hp.cache_dtype))
        cache.save(path)
    if editor.preconditioners is not None:
        editor.estimate_preconditioners(second_moments(editor, cache), hp.precondition_damping)
    return cache
