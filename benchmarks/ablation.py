"""Ablation of DAFNet's fusion and preconditioner: each variant trained with the same budget on the
same cached trunk, then edited through EasyEdit and scored by the suite's protocols.

    python -m benchmarks.ablation --steps 300
    (defaults: SmolLM2-135M, trained on CounterFact train + DAFSet-CF, scored on CounterFact val)

Variants: fusion {additive, convex} x precondition {on, off}. Writes <out>/ablation.json and
<out>/ablation.md; a rerun resumes a variant's training from its checkpoint and keeps finished rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import dafnet_plugin  # registers DAFNet with EasyEdit
from dafnet_plugin import DAFNetHyperParams, attach
from dafnet_plugin.data.dafset import DAFSetDataset, load_records
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for

from .protocols import run_sequences

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = list(itertools.product(("additive", "convex"), (True, False)))


def train(hp: DAFNetTrainingHparams, sources: dict, steps: int, checkpoint: Path) -> float:
    """Train one variant (resuming); returns the seconds this call spent."""
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hp.model_name).eval()
    tok = AutoTokenizer.from_pretrained(hp.model_name)
    editor = attach(model, hp, seed=hp.seed)
    cache = trunk_cache_for(editor, tok, sources, hp)
    DAFNetTrainer(editor, tok, hp, None, checkpoint, cache).run(steps)
    return time.perf_counter() - start


def score(hp: DAFNetHyperParams, records: list[dict], lengths: list[int]) -> dict:
    from easyeditor import BaseEditor

    editor = BaseEditor.from_hparams(hp)
    rows = {}
    for T in lengths:
        with tqdm(total=T, desc=f"{hp.fusion}, precondition={hp.precondition}, T={T}") as bar:
            rows[T] = run_sequences(editor, records[:T], T, bar)["final"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="YAML name under hparams/DAFNet and hparams/TRAINING/DAFNet")
    p.add_argument("--train", nargs="+", default=[str(DATA / "counterfact-train.json"), str(DATA / "dafset-cf-train.json")])
    p.add_argument("--eval", default=str(DATA / "counterfact-val.json"))
    p.add_argument("--steps", type=int, default=300, help="training steps of every variant")
    p.add_argument("--T", type=int, nargs="+", default=[10, 100])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if results and results.get("steps") != args.steps:
        raise SystemExit(f"{path} holds variants trained for {results['steps']} steps, not {args.steps}; give another --out")
    results.update(steps=args.steps, train=[Path(f).name for f in args.train], eval=Path(args.eval).name)
    sources = {Path(f).stem: [d[i] for i in range(len(d))] for f in args.train for d in [DAFSetDataset(f)]}
    records = load_records(args.eval)
    for fusion, precondition in VARIANTS:
        name = f"{fusion}{'+precondition' if precondition else ''}"
        if name in results.get("rows", {}):
            continue
        hp = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{args.model}.yaml")
        hp.fusion, hp.precondition, hp.results_dir = fusion, precondition, str(out / name)
        checkpoint = out / name / "dafnet.pt"
        seconds = train(hp, sources, args.steps, checkpoint)
        edit_hp = DAFNetHyperParams.from_hparams(f"hparams/DAFNet/{args.model}.yaml")
        edit_hp.fusion, edit_hp.precondition, edit_hp.archive = fusion, precondition, str(checkpoint)
        rows = score(edit_hp, records, args.T)
        results.setdefault("rows", {})[name] = {"train_s": round(seconds, 1), **{f"T={T}": r for T, r in rows.items()}}
        path.write_text(json.dumps(results, indent=1))
    lines = [f"DAFNet ablation: {args.model}, {args.steps} training steps each on {', '.join(results['train'])}; "
             f"final protocol on {results['eval']}", "",
             "| fusion | precondition | T | rewrite | rephrase | locality | gen EM |", "|---|---|---:|---:|---:|---:|---:|"]
    for fusion, precondition in VARIANTS:
        row = results["rows"][f"{fusion}{'+precondition' if precondition else ''}"]
        for T in args.T:
            r = row[f"T={T}"]
            lines.append(f"| {fusion} | {'on' if precondition else 'off'} | {T} | {r['rewrite_acc']:.3f} | "
                         f"{r['rephrase_acc']:.3f} | {r['locality']:.3f} | {r['gen_em']:.3f} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
