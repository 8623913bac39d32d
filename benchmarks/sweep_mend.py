"""A small sweep over MEND's training settings, to find ones under which MEND edits at the budget a
CPU run can afford (issue 11: the host's gpt2-xl rates, lr 1e-6 with accumulate_bs 10, were set for
~100k GPU steps; at 400 steps they leave MEND untrained).

Each setting trains MEND through the host's ``EditTrainer`` exactly as the comparison suite does
(``benchmarks.methods.trained.train_mend``, cached by content), then edits through the host's
``BaseEditor`` and is scored by the suite's single-turn protocol (rewrite, rephrase, locality against
the unedited model, generation exact match). Scoring uses the last ``--holdout`` records of the
*training* file, held apart from training together with every record that shares one of their
subjects; the evaluation file (counterfact-val.json) is never read, so choosing settings here leaves
it unseen. Writes ``<out>/sweep.json`` (resumable: finished settings are skipped) and ``<out>/sweep.md``.

    python -m benchmarks.sweep_mend                      # the grid below, SmolLM2-135M, CounterFact train
    python -m benchmarks.sweep_mend --configs center lr=1e-5
    python -m benchmarks.sweep_mend --smoke              # the tiny facts model and built-in edits, seconds

Cost: each setting's training (its budget is in the table: optimizer updates, minutes) plus ~50
single-turn edits (~0.4 s each). Measured on a 2-core CPU, SmolLM2-135M, last 3 layers: 1.3-2.0 s a
host-trainer step, so a 400-step setting takes 9-13 minutes and the full grid (4,600 steps) 2-2.5 hours.
A setting's ``budget.train_steps_s / budget.training_steps`` in sweep.json gives its measured rate.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from dafnet_plugin.default_model import cache_root as default_cache_root

from .held_apart import split_held_apart, write_if_changed
from .methods.trained import n_layers_of, parse_layers
from .presets import SHARED_DATA
from .saved_json import read_json, write_json

# The host's MEND edits the last 3 layers' MLPs. The centre is a setting a few hundred CPU steps can
# train: Adam at 1e-4 stepping every train step, and an initial edit step size (edit_lr, learned at
# lr_lr) large enough that MEND's first edits already move a 135M model. Each other setting changes
# one thing of the centre, except "host", the host's gpt2-xl rates (what the suite used before).
CENTER: dict[str, Any] = dict(lr=1e-4, edit_lr=1e-3, lr_lr=1e-3, accumulate_bs=1, steps=400, layers="last3",
                              lr_scale=1.0)
# editing-time only (MEND's edit is scaled by it): settings that differ in it share one trained archive
EDITING_ONLY = ("lr_scale",)
# a setting may also name "mlp": "all" (the default, the host's) or "down" (see trained.inner_params_for);
# it is left out of CENTER so that the archives trained before it existed keep their cache keys
DEFAULT_MLP = "all"
GRID: dict[str, dict[str, Any]] = {
    "host": dict(lr=1e-6, edit_lr=1e-4, lr_lr=1e-4, accumulate_bs=10),
    "center": {},
    "lr=1e-5": dict(lr=1e-5),
    # lr=1e-5 edits (rewrite 1.00) but spills (locality 0.14): the same archive, its edits scaled down
    "lr=1e-5,lr_scale=0.5": dict(lr=1e-5, lr_scale=0.5),
    "lr=1e-5,lr_scale=0.25": dict(lr=1e-5, lr_scale=0.25),
    "lr=1e-5,lr_scale=0.1": dict(lr=1e-5, lr_scale=0.1),
    # keys outside CENTER go to the host's training hparams as they are (cloc: the locality loss weight, 1.0)
    "lr=1e-5,cloc=5": dict(lr=1e-5, cloc=5.0),
    "lr=1e-5,cloc=5,lr_scale=0.5": dict(lr=1e-5, cloc=5.0, lr_scale=0.5),
    # the locality loss had 400 steps to act: two and a half times as many
    "lr=1e-5,cloc=5,steps=1000": dict(lr=1e-5, cloc=5.0, steps=1000),
    "lr=1e-5,layers=last2": dict(lr=1e-5, layers="last2"),   # fewer edited layers, a smaller edit
    # the host's locality loss missed the logit that predicts the answer: the same settings, trained on it
    # ("locality_at_answer", trained.py); a setting without it keeps the host's window, as every setting
    # before that fix was trained (and keeps its cache key)
    "lr=1e-5,loc@answer": dict(lr=1e-5, locality_at_answer=True),
    "lr=1e-5,loc@answer,lr_scale=0.5": dict(lr=1e-5, locality_at_answer=True, lr_scale=0.5),
    # trained on the answer, MEND keeps its neighbours (locality 0.86) but writes less (rewrite 0.54)
    "lr=1e-5,loc@answer,lr_scale=1.5": dict(lr=1e-5, locality_at_answer=True, lr_scale=1.5),
    "lr=1e-5,loc@answer,lr_scale=2": dict(lr=1e-5, locality_at_answer=True, lr_scale=2.0),
    "lr=1e-5,loc@answer,cloc=0.5": dict(lr=1e-5, locality_at_answer=True, cloc=0.5),
    # scaling and cloc move along one frontier, just short of (0.80, 0.80): twice the rate, the same steps
    "lr=2e-5,loc@answer": dict(lr=2e-5, locality_at_answer=True),
    "lr=2e-5,loc@answer,lr_scale=1.5": dict(lr=2e-5, locality_at_answer=True, lr_scale=1.5),
    # the host scores MEND's edit loss on the edited prompt; MEND's own trainer on its rephrase
    # ("edit_loss_on", trained.py), which asks for edits that generalise (rephrase was 0.08-0.28 above)
    "lr=1e-5,loc@answer,loss@rephrase": dict(lr=1e-5, locality_at_answer=True, edit_loss_on="rephrase"),
    "lr=1e-5,loc@answer,loss@rephrase,lr_scale=1.5": dict(lr=1e-5, locality_at_answer=True,
                                                           edit_loss_on="rephrase", lr_scale=1.5),
    # scored on the rephrase, MEND learns to write after CounterFact's looser rephrases (rephrase 0.74) and
    # not after the prompt (rewrite 0.20). The prompt's loss, trained longer:
    "lr=1e-5,loc@answer,steps=1000": dict(lr=1e-5, locality_at_answer=True, steps=1000),
    "lr=1e-5,loc@answer,steps=1000,lr_scale=1.5": dict(lr=1e-5, locality_at_answer=True, steps=1000, lr_scale=1.5),
    # 1000 steps land on the 400-step frontier (0.73 / 0.81 at 1.5): the same archive, scaled further
    "lr=1e-5,loc@answer,steps=1000,lr_scale=1.75": dict(lr=1e-5, locality_at_answer=True, steps=1000, lr_scale=1.75),
    "lr=1e-5,loc@answer,steps=1000,lr_scale=2": dict(lr=1e-5, locality_at_answer=True, steps=1000, lr_scale=2.0),
    # at the last layers MEND's gradient sits at the answer-predicting positions, whose keys the neighbours
    # (same relation, other subject) share; at mid depth, where ROME and MEMIT write (4-8 of SmolLM2's 30),
    # it also reaches the subject's tokens through attention
    "lr=1e-5,loc@answer,layers=4-6": dict(lr=1e-5, locality_at_answer=True, layers="4-6"),
    "lr=1e-5,loc@answer,layers=4-6,lr_scale=1.5": dict(lr=1e-5, locality_at_answer=True, layers="4-6",
                                                        lr_scale=1.5),
    "lr=1e-5,loc@answer,layers=4-6,lr_scale=2": dict(lr=1e-5, locality_at_answer=True, layers="4-6", lr_scale=2.0),
    # the host weighs the edit loss 0.1 against locality's 1.0, and the edit is then scaled up at editing
    # time (x1.5-1.75 above), past the magnitude the locality loss was trained at: weigh both alike instead
    "lr=1e-5,loc@answer,cedit=1": dict(lr=1e-5, locality_at_answer=True, cedit=1.0),
    "lr=1e-5,loc@answer,cedit=1,lr_scale=0.75": dict(lr=1e-5, locality_at_answer=True, cedit=1.0, lr_scale=0.75),
    "lr=1e-5,loc@answer,cedit=1,lr_scale=1.5": dict(lr=1e-5, locality_at_answer=True, cedit=1.0, lr_scale=1.5),
    # the output projections only (mlp=down), as ROME, MEMIT and DAFNet edit: on SwiGLU an edit of gate
    # and up multiplies their effects, one way spill may grow; fewer weights also means a weaker edit
    "lr=1e-5,mlp=down": dict(lr=1e-5, mlp="down"),
    # down-only edits reach the rephrases (0.92) and spill further still (locality 0.10): scaled down
    "lr=1e-5,mlp=down,lr_scale=0.5": dict(lr=1e-5, mlp="down", lr_scale=0.5),
    "lr=1e-5,mlp=down,lr_scale=0.25": dict(lr=1e-5, mlp="down", lr_scale=0.25),
    "lr=1e-5,mlp=down,layers=last6": dict(lr=1e-5, mlp="down", layers="last6"),
    "lr=1e-5,mlp=down,cloc=5": dict(lr=1e-5, mlp="down", cloc=5.0),
    "lr=3e-4": dict(lr=3e-4),
    "edit_lr=1e-4": dict(edit_lr=1e-4, lr_lr=1e-4),
    "edit_lr=1e-2": dict(edit_lr=1e-2),
    "accumulate_bs=5": dict(accumulate_bs=5),
    "steps=1000": dict(steps=1000),
    "layers=last6": dict(layers="last6"),
    "layers=14-16": dict(layers="14-16"),   # mid-depth of a 30-layer model
}
# Two edited layers at least: the host's MEND normalises its inputs with running statistics and fails
# when its first training edit gives one net fewer than 2 token rows (a one-token target, one layer).
SMOKE_GRID: dict[str, dict[str, Any]] = {
    "center": dict(steps=3, layers="0-1"),
    "host": dict(lr=1e-6, edit_lr=1e-4, lr_lr=1e-4, accumulate_bs=2, steps=4, layers="last2"),
}
# issue 11's bar for MEND on counterfact-val.json, shown here as a guide on the held-apart slice
BAR = dict(rewrite_acc=0.80, locality=0.80)


def run_setting(name: str, setting: dict[str, Any], model_path: str, train_file: Path, held: list[dict],
                cache_root: Path) -> dict[str, Any]:
    """Train MEND with ``setting`` (cached), edit every held-apart record on its own, and score."""
    from easyeditor import BaseEditor

    from .methods.context import Context
    from .methods.trained import bind_fresh_executor, train_mend, training_budget
    from .protocols import run_sequences

    layers = parse_layers(setting["layers"], n_layers_of(model_path))
    ctx = Context(model_path, "", [str(train_file)], cache_root)
    trained = {k: v for k, v in setting.items() if k not in EDITING_ONLY}
    work_dir = ctx.cache_dir("MEND-sweep", json.dumps(trained, sort_keys=True))
    # keys outside CENTER reach train_mend as they are (edit_loss_on, cloc, ...); mlp and the locality
    # window are passed with the sweep's defaults (the window off, unlike train_mend's, for old settings)
    host_keys = {k: v for k, v in setting.items() if k not in CENTER and k not in ("mlp", "locality_at_answer")}
    hp = train_mend(model_path, train_file, work_dir, setting["steps"], layers=layers,
                    mlp=setting.get("mlp", DEFAULT_MLP), lr=setting["lr"], edit_lr=setting["edit_lr"],
                    lr_lr=setting["lr_lr"], accumulate_bs=setting["accumulate_bs"], lr_scale=setting["lr_scale"],
                    locality_at_answer=setting.get("locality_at_answer", False), **host_keys)
    editor = BaseEditor.from_hparams(hp)
    bind_fresh_executor(editor)
    with tqdm(total=len(held), desc=f"{name}: single-turn edits") as bar:
        scores = run_sequences(editor, held, 1, bar)["single"]
    return {"name": name, **setting, "layer_ids": layers, "budget": training_budget(hp), **scores}


def sweep(model_path: str, records: list[dict], grid: dict[str, dict[str, Any]], out: Path, holdout: int,
          cache_root: Path) -> list[dict]:
    """Every setting of ``grid`` (each a change to CENTER), rows in ``out/sweep.json`` and ``out/sweep.md``."""
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_held_apart(records, holdout)
    train_file = out / "train-part.json"
    write_if_changed(train_file, train)
    results_path = out / "sweep.json"
    setup = {"model": model_path, "n_train": len(train), "held_apart": [r["prompt"] for r in held]}
    saved = read_json(results_path) or {}
    rows = saved.get("rows", []) if saved.get("setup") == setup else []
    for name, change in grid.items():
        setting = {**CENTER, **change}
        if any(r["name"] == name and all(r.get(k) == v for k, v in setting.items()) and r["status"] == "ok"
               for r in rows):
            continue
        rows = [r for r in rows if r["name"] != name]
        start = time.perf_counter()
        try:
            row = {**run_setting(name, setting, model_path, train_file, held, cache_root), "status": "ok"}
        except Exception as error:  # one failing setting (a NaN loss, say) is a row with its reason
            row = {"name": name, **setting, "status": "failed", "error": f"{type(error).__name__}: {error}"}
        row["wall_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        write_json(results_path, {"setup": setup, "rows": rows})
        (out / "sweep.md").write_text(table(rows, len(held), len(train)))
    (out / "sweep.md").write_text(table(rows, len(held), len(train)))
    return rows


def table(rows: list[dict], n_held: int, n_train: int) -> str:
    head = (f"MEND settings, each trained on {n_train} records of the training file and scored on {n_held} "
            f"records held apart from it (single-turn; bar: rewrite >= {BAR['rewrite_acc']}, "
            f"locality >= {BAR['locality']}).\n\n"
            "| setting | lr | edit_lr | lr_lr | accumulate_bs | steps | layers | lr_scale | updates | train min "
            "| rewrite | rephrase | locality | gen EM | s/edit | bar |\n"
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        settings = (f"| {r['name']} | {r['lr']:g} | {r['edit_lr']:g} | {r['lr_lr']:g} | {r['accumulate_bs']} "
                    f"| {r['steps']} | {_layers(r)} | {r.get('lr_scale', 1.0):g} |")
        if r["status"] != "ok":
            reason = r["error"][:80].replace("|", "/")
            lines.append(f"{settings} failed: {reason} |" + " |" * 7)
            continue
        budget = r.get("budget") or {}
        meets = all(r[k] >= v for k, v in BAR.items())
        lines.append(f"{settings} {budget.get('optimizer_updates', '')} | {budget.get('wall_s', 0) / 60:.1f} "
                     f"| {r['rewrite_acc']:.3f} | {r['rephrase_acc']:.3f} | {r['locality']:.3f} | {r['gen_em']:.3f} "
                     f"| {r['sec_per_edit']:.2f} | {'yes' if meets else 'no'} |")
    return head + "\n".join(lines) + "\n"


def _layers(row: dict) -> str:
    mlp = row.get("mlp", DEFAULT_MLP)
    return row["layers"] if mlp == DEFAULT_MLP else f"{row['layers']} ({mlp})"


def _select(grid: dict[str, dict[str, Any]], names: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    if not names:
        return grid
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(grid)}")
    return {n: grid[n] for n in names}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or folder (default smollm2-135m; --smoke: the tiny facts model)")
    parser.add_argument("--train", default=f"{SHARED_DATA}/counterfact-train.json",
                        help="training file (CounterFact, EasyEdit form); its last --holdout records score")
    parser.add_argument("--holdout", type=int, help="records held apart for scoring (default 50; --smoke 4)")
    parser.add_argument("--configs", nargs="*", help="settings of the grid to run (default all)")
    parser.add_argument("--out", help="default runs/sweep-mend (--smoke: runs/sweep-mend-smoke)")
    parser.add_argument("--cache", help="default <cache root>/suite (DAFNET_CACHE or ~/.cache/dafnet-easyedit), where the suite caches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny facts model, the built-in edits and two settings of a few steps")
    args = parser.parse_args(argv)

    import dafnet_plugin  # noqa: F401  registers with the host
    from dafnet_plugin.default_model import resolve_model

    torch.set_num_threads(args.threads)
    if args.smoke:
        from dafnet_plugin.data.builtin import make_edits, to_counterfact
        from dafnet_plugin.tiny_model import tiny_model_path

        model_path = args.model or tiny_model_path()
        records, grid, holdout = to_counterfact(make_edits(split="train"))[:60], SMOKE_GRID, args.holdout or 4
        out = Path(args.out or "runs/sweep-mend-smoke")
    else:
        model_path = resolve_model(args.model or "smollm2-135m")
        records, grid, holdout = json.loads(Path(args.train).read_text()), GRID, args.holdout or 50
        out = Path(args.out or "runs/sweep-mend")
    cache_root = Path(args.cache or default_cache_root() / "suite")
    rows = sweep(model_path, records, _select(grid, args.configs), out, holdout, cache_root)
    print((out / "sweep.md").read_text())
    return rows


if __name__ == "__main__":
    main()
