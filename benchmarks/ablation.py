"""Ablations of DAFNet's design at an equal training budget: each variant trained the same number of
cached-trunk steps with the same seed, then edited through EasyEdit and scored by the suite's protocols
on the dev split (records of counterfact-train that training never draws: benchmarks.dev_split), never
on the evaluation file.

    python -m benchmarks.ablation --study locus --steps 300          # where DAFNet writes
    python -m benchmarks.ablation --study fusion --steps 300         # fusion rule x preconditioner
    python -m benchmarks.ablation --study locus --variants mid/subject_last --steps 300   # one variant

Studies:
- locus: which layers (late: the YAML's, the last four MLP output projections; mid: where MEMIT writes
  for this model, benchmarks.methods.locate_edit.rewrite_layers) and which token rows (editor.ROWS) feed
  the network and carry the update.
- fusion: the fusion rule {additive, convex} x the preconditioner {on, off}.

Each variant keeps its checkpoint, training log (with dev-split scores every --dev-every steps) and plot
in <out>/<variant>/, and its scores in <out>/<variant>/result.json: a rerun resumes a variant's training
and keeps finished rows, and two processes may run different variants into one --out at once.
<out>/ablation.md is the table of every finished variant.
"""
from __future__ import annotations

import argparse
import functools
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

from .dev_split import DEV_SPLIT_SIZE, dev_records
from .methods.locate_edit import model_layout, rewrite_layers
from .protocols import run_sequences
from .saved_json import write_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDIES: dict[str, dict[str, dict]] = {
    "locus": {f"{layers}/{rows}": {"layers": layers, "rows": rows}
              for layers in ("late", "mid") for rows in ("all", "subject_last", "subject", "last")},
    "fusion": {f"{fusion}{'+precondition' if on else ''}": {"fusion": fusion, "precondition": on}
               for fusion in ("additive", "convex") for on in (True, False)},
}


@functools.cache  # the training and the editing hparams of a variant both ask; the model loads once
def mid_layers(model_path: str) -> tuple[str, ...]:
    """The weights MEMIT rewrites in this model (its layers scaled to the model's depth)."""
    model = AutoModelForCausalLM.from_pretrained(model_path)
    layout = model_layout(model)
    return tuple(f"{layout['rewrite_module_tmp'].format(i)}.weight" for i in rewrite_layers(layout)["MEMIT"])


def configure(hp, variant: dict, model_path: str) -> None:
    """Set a variant's settings on training or editing hparams (``layers`` names a place, the rest are keys)."""
    for key, value in variant.items():
        if key == "layers":
            if value == "mid":
                hp.inner_params = list(mid_layers(model_path))
        else:
            setattr(hp, key, value)


def train(hp: DAFNetTrainingHparams, sources: dict, dev: list[dict], steps: int, checkpoint: Path) -> float:
    """Train one variant (resuming); returns the seconds this call spent, its trunk cache included."""
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hp.model_name).eval()
    tok = AutoTokenizer.from_pretrained(hp.model_name)
    editor = attach(model, hp, seed=hp.seed)
    cache = trunk_cache_for(editor, tok, sources, hp)
    DAFNetTrainer(editor, tok, hp, None, checkpoint, cache, dev_records=dev).run(steps)
    return time.perf_counter() - start


def score(hp: DAFNetHyperParams, records: list[dict], lengths: list[int], label: str) -> dict:
    from easyeditor import BaseEditor

    editor = BaseEditor.from_hparams(hp)
    rows = {}
    for T in lengths:
        with tqdm(total=T, desc=f"{label}, T={T}") as bar:
            rows[T] = run_sequences(editor, records[:T], T, bar)["final"]
    return rows


def table(out: Path, variants: dict[str, dict], lengths: list[int]) -> str:
    lines = ["| variant | steps | train min | T | rewrite | rephrase | locality | gen EM | s/edit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in variants:
        path = out / name.replace("/", "-") / "result.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        for T in lengths:
            r = result.get(f"T={T}")
            if r:
                lines.append(f"| {name} | {result['steps']} | {result['train_s'] / 60:.1f} | {T} | "
                             f"{r['rewrite_acc']:.3f} | {r['rephrase_acc']:.3f} | {r['locality']:.3f} | "
                             f"{r['gen_em']:.3f} | {r['sec_per_edit']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=sorted(STUDIES), default="locus")
    p.add_argument("--variants", nargs="+", help="variants of the study to run (default: all of them)")
    p.add_argument("--model", default="smollm2-135m", help="YAML name under hparams/DAFNet and hparams/TRAINING/DAFNet")
    p.add_argument("--train", nargs="+", default=[str(DATA / "counterfact-train.json"), str(DATA / "dafset-cf-train.json")])
    p.add_argument("--eval", help="records to score (default: the dev split, benchmarks.dev_split)")
    p.add_argument("--n-dev", type=int, default=DEV_SPLIT_SIZE, help="records in the dev split")
    p.add_argument("--steps", type=int, default=300, help="training steps of every variant")
    p.add_argument("--pool", type=int, help="training records cached and drawn from (default: the YAML's trunk_pool); "
                   "the dev split stays outside the YAML's pool either way")
    p.add_argument("--score-edits", type=int, help="edits of a sequence scored each step (default: the YAML's)")
    p.add_argument("--dev-every", type=int, default=25, help="steps between dev-split scores in the training log")
    p.add_argument("--T", type=int, nargs="+", default=[10, 100])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="default runs/ablation-<study>")
    args = p.parse_args(argv)
    variants = STUDIES[args.study]
    chosen = args.variants or list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise SystemExit(f"--variants: {unknown} not in study {args.study!r} ({', '.join(variants)})")
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/ablation-{args.study}")
    training_yaml, editing_yaml = (f"hparams/TRAINING/DAFNet/{args.model}.yaml", f"hparams/DAFNet/{args.model}.yaml")
    base = DAFNetTrainingHparams.from_hparams(training_yaml)
    dev = dev_records(args.train, base.trunk_pool, args.n_dev)  # outside the pool training draws from
    records = load_records(args.eval) if args.eval else dev
    sources = {Path(f).stem: [d[i] for i in range(len(d))] for f in args.train for d in [DAFSetDataset(f)]}
    for name in chosen:
        folder = out / name.replace("/", "-")
        result_path = folder / "result.json"
        if result_path.exists() and json.loads(result_path.read_text()).get("steps") == args.steps:
            continue  # finished (a different --steps trains on from its checkpoint and scores again)
        hp = DAFNetTrainingHparams.from_hparams(training_yaml)
        configure(hp, variants[name], hp.model_name)
        hp.results_dir, hp.dev_every = str(folder), args.dev_every
        hp.trunk_pool = args.pool or hp.trunk_pool
        hp.score_edits = args.score_edits or hp.score_edits
        checkpoint = folder / "dafnet.pt"
        seconds = train(hp, sources, dev, args.steps, checkpoint)
        edit_hp = DAFNetHyperParams.from_hparams(editing_yaml)
        configure(edit_hp, variants[name], edit_hp.model_name)
        edit_hp.archive = str(checkpoint)
        rows = score(edit_hp, records, args.T, name)
        result = {"variant": name, "settings": variants[name], "inner_params": hp.inner_params, "steps": args.steps,
                  "pool": hp.trunk_pool, "score_edits": hp.score_edits,
                  "train_s": round(seconds, 1), "eval": args.eval or f"dev split ({len(dev)} records)",
                  **{f"T={T}": r for T, r in rows.items()}}
        write_json(result_path, result)
    text = table(out, variants, args.T)
    header = (f"DAFNet ablation ({args.study}): {args.model}, {args.steps} training steps each "
              f"({args.score_edits or base.score_edits} edits scored a step) on {args.pool or base.trunk_pool} records of {', '.join(Path(f).name for f in args.train)}; final protocol on "
              f"{args.eval or f'the dev split ({len(dev)} records outside the training pool)'}")
    (out / "ablation.md").write_text(f"{header}\n\n{text}\n")
    print(f"{header}\n\n{text}")


if __name__ == "__main__":
    main()
