"""Train DAFNet with EasyEdit's trainer and score it with EasyEdit's metrics, before and after.

    python -m benchmarks.train_dafnet --steps 1000
    (defaults: SmolLM2-135M, CounterFact train + DAFSet-CF for training, CounterFact val for scoring)

Writes <out>/results.json, <out>/results.md and <out>/curve.png; a rerun resumes training from the
checkpoint in <out> and reuses finished scores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import dafnet_plugin  # registers DAFNet with EasyEdit
from dafnet_plugin import DAFNetHyperParams
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset, load_records
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training_plot import smoothed

from .protocols import run_sequences
from .saved_json import read_json, write_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="name of the YAMLs in hparams/DAFNet and hparams/TRAINING/DAFNet")
    p.add_argument("--train", nargs="+", default=[str(DATA / "counterfact-train.json"), str(DATA / "dafset-cf-train.json")])
    p.add_argument("--val", default=str(DATA / "counterfact-val.json"))
    p.add_argument("--steps", type=int, default=None, help="training sequences (default: the YAML's max_iters)")
    p.add_argument("--n-eval", type=int, default=50, help="held-out edits scored per protocol")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def score(edit_hparams: DAFNetHyperParams, archive: Path, records: list[dict], label: str) -> dict:
    from easyeditor import BaseEditor

    edit_hparams.archive = str(archive)
    editor = BaseEditor.from_hparams(edit_hparams)
    rows = {}
    for T in (1, 10):
        with tqdm(total=len(records) // T * T, desc=f"scoring {label}, T={T}") as bar:
            for protocol, row in run_sequences(editor, records, T, bar).items():
                rows[f"{protocol}@T={T}"] = row
    return rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from easyeditor import EditTrainer

    out = Path(args.out or f"runs/train-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    config = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{args.model}.yaml")
    config.results_dir = str(out)
    if args.steps is not None:
        config.max_iters = args.steps
    edit_hparams = DAFNetHyperParams.from_hparams(f"hparams/DAFNet/{args.model}.yaml")
    sources = {Path(p).stem: DAFSetDataset(p, config=config) for p in args.train}
    train_set = MixtureDataset(sources)
    val_records = load_records(args.val)[: args.n_eval]

    trainer = EditTrainer(config=config, train_set=train_set, val_set=DAFSetDataset(args.val, size=8, config=config))
    results_path = out / "results.json"
    results = read_json(results_path) or {}
    untrained = out / "untrained.pt"
    if not untrained.exists():
        torch.save({"model": trainer.model.editor.state_dict()}, untrained)
    if "before" not in results:
        results["before"] = score(edit_hparams, untrained, val_records, "untrained")
        write_json(results_path, results)

    start = time.time()
    history = trainer.run()
    results["training"] = {"steps": config.max_iters, "wall_seconds_this_run": round(time.time() - start, 1),
                           "train_files": args.train, "sources": {n: len(s) for n, s in sources.items()}}
    checkpoint = trainer.dafnet_trainer.checkpoint
    results["after"] = score(edit_hparams, checkpoint, val_records, "trained")
    write_json(results_path, results)
    log = [json.loads(line) for line in checkpoint.with_suffix(".log.jsonl").read_text().splitlines()]
    write_report(out, results, log)


def write_report(out: Path, results: dict, log: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| when | protocol | n | rewrite | rephrase | locality | gen EM | s/edit |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for when in ("before", "after"):
        for protocol, r in results.get(when, {}).items():
            lines.append(f"| {when} | {protocol} | {r['n_edits']} | {r['rewrite_acc']:.3f} | {r['rephrase_acc']:.3f} "
                         f"| {r['locality']:.3f} | {r['gen_em']:.3f} | {r['sec_per_edit']:.3f} |")
    t = results.get("training", {})
    seconds = log[-1]["seconds"] if log else 0
    lines.append(f"\nTraining: {len(log)} logged steps, last step {log[-1]['step'] if log else 0}, "
                 f"{seconds / 60:.1f} min in the last run, k_max {log[-1]['k_max'] if log else '-'}; sources {t.get('sources')}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if log:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        steps = [h["step"] for h in log]
        smooth = smoothed([h["loss"] for h in log])
        ax[0].plot(steps, [h["loss/edit"] for h in log], alpha=0.3, label="edit NLL")
        ax[0].plot(steps, [h["loss/rephrase"] for h in log], alpha=0.3, label="rephrase NLL")
        ax[0].plot(steps, [h["loss/loc"] for h in log], alpha=0.3, label="locality KL")
        ax[0].plot(steps, smooth, color="k", label="total (smoothed)")
        ax[0].set_yscale("log"), ax[0].set_xlabel("step"), ax[0].legend()
        ax[1].plot(steps, [h["k_max"] for h in log])
        ax[1].set_xlabel("step"), ax[1].set_ylabel("curriculum k_max")
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=120)


if __name__ == "__main__":
    main()
