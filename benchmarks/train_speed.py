"""Meta-training speed: the whole-model path against the cached trunk, same k, same machine, one run.

    python -m benchmarks.train_speed --k 20 --steps 5
    (defaults: SmolLM2-135M and its training YAML, CounterFact train + DAFSet-CF)
    python -m benchmarks.train_speed --device cuda --dtype bfloat16 --k 100   # a GPU: bf16 model, fp32 networks
    ... --model-dir DIR --random-weights     # DIR's config and tokenizer, random weights (cost, not quality)

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
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dafnet_plugin import attach
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_model(path: str, device: str, dtype: torch.dtype, random_weights: bool) -> torch.nn.Module:
    """The model in ``dtype`` on ``device``; with ``random_weights`` only its config is read (a GPU
    machine that the weights cannot reach still measures the cost)."""
    if random_weights:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model.eval()


def seconds_per_step(hp: DAFNetTrainingHparams, tok, sources: MixtureDataset, k: int, steps: int,
                     cached: bool, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     random_weights: bool = False) -> dict:
    model = load_model(hp.model_name, device, dtype, random_weights)
    editor = attach(model, hp, seed=hp.seed)  # the networks stay float32 whatever the model's dtype
    with tempfile.TemporaryDirectory() as tmp:
        # a random model's cache would be keyed as its folder's real weights: it never goes to the cache root
        start = time.perf_counter()
        cache = trunk_cache_for(editor, tok, {n: [s[i] for i in range(len(s))] for n, s in sources.sources.items()},
                                hp, Path(tmp) / "trunk" if random_weights else None) if cached else None
        prepare = time.perf_counter() - start
        trainer = DAFNetTrainer(editor, tok, hp, lambda rng, k: sources.sample_sequence(rng, k)[1],
                                Path(tmp) / "ck.pt", cache)
        trainer.train_step(k)  # warm-up: first-call allocations are not the steady state
        _sync(device)
        start = time.perf_counter()
        losses = [trainer.train_step(k)["loss"] for _ in range(steps)]
        _sync(device)
        per_step = (time.perf_counter() - start) / steps
    result = {"sec_per_step": round(per_step, 3), "steps_per_sec": round(1 / per_step, 4),
              "prepare_sec": round(prepare, 1), "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
              "network_dtypes": sorted({str(p.dtype) for p in editor.parameters()}),
              "model_dtypes": sorted({str(p.dtype) for p in model.parameters()})}
    if device.startswith("cuda"):
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        torch.cuda.reset_peak_memory_stats()
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="YAML name under hparams/TRAINING/DAFNet")
    p.add_argument("--train", nargs="+", default=[str(DATA / "counterfact-train.json"), str(DATA / "dafset-cf-train.json")])
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=int, default=None, help="records cached (default: the YAML's trunk_pool)")
    p.add_argument("--out", default="runs/train_speed")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the model's")
    p.add_argument("--model-dir", help="a model folder in place of the YAML's model_name")
    p.add_argument("--random-weights", action="store_true", help="the model's config and tokenizer only")
    p.add_argument("--paths", nargs="+", default=["whole_model", "cached_trunk"], choices=["whole_model", "cached_trunk"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hp = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{args.model}.yaml")
    hp.trunk_pool = args.pool or hp.trunk_pool
    if args.model_dir:
        hp.model_name = hp.tokenizer_name = str(Path(args.model_dir).resolve())
    tok = AutoTokenizer.from_pretrained(hp.model_name)
    sources = MixtureDataset({Path(f).stem: DAFSetDataset(f) for f in args.train})

    result = {"k": args.k, "steps": args.steps, "threads": args.threads, "score_edits": hp.score_edits,
              "modules": hp.inner_params, "network": [hp.inner_dim, hp.ffn_dim], "precondition": hp.precondition,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "random_weights": args.random_weights}
    for name in args.paths:
        hp.trunk_cache = cached = name == "cached_trunk"
        result[name] = seconds_per_step(hp, tok, sources, args.k, args.steps, cached, args.device,
                                        getattr(torch, args.dtype), args.random_weights)
        print(name, result[name], flush=True)
    if len(args.paths) == 2:
        result["speedup"] = round(result["whole_model"]["sec_per_step"] / result["cached_trunk"]["sec_per_step"], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
