"""Meta-training speed: the whole-model path against the cached trunk, same k, same machine, one run.

    python -m benchmarks.train_speed --k 20 --steps 5
    (defaults: SmolLM2-135M and its training YAML, CounterFact train + DAFSet-CF)

Both paths train the same editor config from the same start for --steps steps at sequences of
exactly --k edits; the cached path's cache is built first (its time is reported apart, and a
second run finds it on disk). Prints and writes <out>/train_speed.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dafnet_plugin import attach
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def seconds_per_step(hp: DAFNetTrainingHparams, tok, sources: MixtureDataset, k: int, steps: int,
                     cached: bool) -> dict:
    model = AutoModelForCausalLM.from_pretrained(hp.model_name).eval()
    editor = attach(model, hp, seed=hp.seed)
    start = time.perf_counter()
    cache = trunk_cache_for(editor, tok, {n: [s[i] for i in range(len(s))] for n, s in sources.sources.items()},
                            hp) if cached else None
    prepare = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DAFNetTrainer(editor, tok, hp, lambda rng, k: sources.sample_sequence(rng, k)[1],
                                Path(tmp) / "ck.pt", cache)
        trainer.train_step(k)  # warm-up: first-call allocations are not the steady state
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(k)
        per_step = (time.perf_counter() - start) / steps
    return {"sec_per_step": round(per_step, 3), "steps_per_sec": round(1 / per_step, 4),
            "prepare_sec": round(prepare, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="YAML name under hparams/TRAINING/DAFNet")
    p.add_argument("--train", nargs="+", default=[str(DATA / "counterfact-train.json"), str(DATA / "dafset-cf-train.json")])
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=int, default=None, help="records cached (default: the YAML's trunk_pool)")
    p.add_argument("--out", default="runs/train_speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hp = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{args.model}.yaml")
    hp.trunk_pool = args.pool or hp.trunk_pool
    tok = AutoTokenizer.from_pretrained(hp.model_name)
    sources = MixtureDataset({Path(f).stem: DAFSetDataset(f) for f in args.train})

    result = {"k": args.k, "steps": args.steps, "threads": args.threads, "score_edits": hp.score_edits,
              "modules": hp.inner_params, "network": [hp.inner_dim, hp.ffn_dim], "precondition": hp.precondition}
    for name, cached in (("whole_model", False), ("cached_trunk", True)):
        hp.trunk_cache = cached
        result[name] = seconds_per_step(hp, tok, sources, args.k, args.steps, cached)
        print(name, result[name], flush=True)
    result["speedup"] = round(result["whole_model"]["sec_per_step"] / result["cached_trunk"]["sec_per_step"], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
