"""GPU scale check: DAFNet, ROME, MEMIT and MEND each make a sequence of edits to a randomly initialised
LLaMA-2-7B-shaped model in bf16, through the host's apply functions as benchmarks/protocols.py drives them;
seconds per edit and peak GPU memory. Random weights measure cost, not quality.

    python -m benchmarks.gpu_scale [--edits 100] [--methods DAFNet ROME MEMIT MEND] [--layers 32] [--out r.json]
    python -m benchmarks.gpu_scale --cpu-smoke    # the same code path: tiny LLaMA, CPU, 3 edits per method
"""
from __future__ import annotations

import argparse
import functools
import contextlib
import gc
import io
import json
import statistics
import sys
import tempfile
import traceback
import types
from pathlib import Path

import torch

MODEL_NAME = "llama-2-7b-shaped-random"  # the host picks its LLaMA code paths by "llama" in the name
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
SUBJECTS = ["Danielle Darrieux", "Toko Yasuda", "Autonomous University of Madrid", "Thomas Stieltjes", "Apple A5",
            "Anaal Nathrakh", "Sydney Opera House", "Pervez Musharraf", "Kuala Lumpur", "Honda Civic"]
RELATIONS = [("The mother tongue of {} is", "English"), ("{} is located in", "Sweden"), ("{} was born in", "Rome"),
             ("{} is a citizen of", "Canada"), ("{} works in the field of", "medicine"), ("{} speaks", "Finnish"),
             ("The headquarters of {} is in", "Paris"), ("{} plays the", "violin"), ("{} is owned by", "BBC"),
             ("{} was created by", "Google")]


def requests(n: int) -> list[dict]:
    """n short counterfactuals (100 distinct subject × relation pairs, then repeats), as host requests."""
    from .protocols import request_of
    return [request_of({"prompt": t.format(s), "rephrase_prompt": "So, " + t.format(s), "target_new": target,
                        "subject": s, "locality_prompt": "The capital of France is", "locality_ground_truth": "Paris"})
            for s, (t, target) in ((SUBJECTS[i % 10], RELATIONS[i // 10 % 10]) for i in range(n))]


def build_model(shape: dict, tok, device: str) -> torch.nn.Module:
    """Random weights, created in bf16 on ``device`` itself; frozen (each method enables what it needs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(**shape, vocab_size=len(tok), max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config._name_or_path = MODEL_NAME  # the host keys its statistics by this name
    return model.eval().requires_grad_(False)


# ----- each method: (the host's hparams, its apply function) for this model ---------------------
def prepare_dafnet(model, tok, work: Path, fusion: str = "additive"):
    from dafnet_plugin import DAFNetHyperParams
    from dafnet_plugin.hparams import load_strict
    from dafnet_plugin.host import apply_dafnet_to_model
    hp = load_strict(DAFNetHyperParams, "hparams/DAFNet/llama-7b.yaml")  # the authors' sizes, no archive
    shift = model.config.num_hidden_layers - 32  # the YAML's layers 29-31 of 32, as far from this model's top
    layers = [(n, int(n.split(".")[2])) for n in hp.inner_params]
    hp.inner_params = [n.replace(f".{i}.", f".{i + shift}.", 1) for n, i in layers if i + shift >= 0]
    hp.model_name = MODEL_NAME
    hp.fusion = fusion
    return hp, apply_dafnet_to_model


def prepare_rome(model, tok, work: Path):
    """The host's ROME (its bf16 dtype fix is in dafnet_plugin.host)."""
    from easyeditor.models.rome import rome_main
    from .methods.locate_edit import model_layout, rome_hparams
    return rome_hparams(MODEL_NAME, model_layout(model), work, mom2_adjustment=False), rome_main.apply_rome_to_model


def prepare_memit(model, tok, work: Path, n_samples: int = 100):
    """The host's MEMIT with identity second moments E[kkᵀ] = I, saved where its layer_stats loads them."""
    from easyeditor.models.memit import memit_main
    from easyeditor.util.runningstats import CombinedStat, SecondMoment, save_cached_state
    from .methods.locate_edit import memit_hparams, model_layout, stats_file
    memit_main.COV_CACHE.clear()
    hp = memit_hparams(MODEL_NAME, model_layout(model), work, n_samples=n_samples)
    for layer in hp.layers:
        moment = SecondMoment(state={"count": 1, "mom2": torch.eye(model.config.intermediate_size).numpy()})
        path = stats_file(model, hp.rewrite_module_tmp.format(layer), work, n_samples)
        save_cached_state(str(path), CombinedStat(mom2=moment), {"sample_size": n_samples})
    return hp, memit_main.apply_memit_to_model


def prepare_mend(model, tok, work: Path):
    """The host's MEND (as hparams/MEND/llama-7b.yaml: the last 3 layers' MLPs), untrained: a freshly built
    MEND saved as an archive, which a fresh MendRewriteExecutor loads at its first edit."""
    from easyeditor import MENDHyperParams
    from easyeditor.models.mend import MendRewriteExecutor
    from easyeditor.trainer.algs.MEND import MEND
    from dafnet_plugin.host import cuda_strings_on_cpu
    from .methods.trained import _MEND_METHOD, _MEND_TRAINING, LLAMA_MLP, _editing_fields
    inner = [f"model.layers.{i}.{p}" for i in range(model.config.num_hidden_layers)[-3:] for p in LLAMA_MLP]
    hp = MENDHyperParams(**_editing_fields({**_MEND_METHOD, **_MEND_TRAINING}, MENDHyperParams), alg_name="MEND",
                         model_name=MODEL_NAME, model_class="LlamaForCausalLM", tokenizer_class="AutoTokenizer",
                         tokenizer_name=tok.name_or_path, inner_params=inner, archive=str(work / "mend.pt"),
                         lr_scale=1.0, results_dir=str(work), device=0)
    for name, p in model.named_parameters():  # what the executor's init_model leaves
        p.requires_grad_(name in inner)
    with cuda_strings_on_cpu():
        state = {k: v.cpu() for k, v in MEND(model, hp, lambda: None).state_dict().items() if k != "model_config"}
    torch.save({"model": {**state, "model_config": model.config.to_dict()}}, hp.archive)  # weights-only loadable
    return hp, MendRewriteExecutor().apply_to_model


PREPARE = {"DAFNet": prepare_dafnet, "ROME": prepare_rome, "MEMIT": prepare_memit, "MEND": prepare_mend}


def run_method(method: str, shape: dict, tok, device: str, reqs: list[dict],
               max_seconds: float = float("inf")) -> dict:
    """A fresh model, sequential edits through the host's apply function, until the requests or ``max_seconds``
    of editing run out (the row says how many were made); a failure is a row with its reason."""
    from .protocols import Session
    seconds, row = [], {"method": method, "status": "ok", "error": None}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        model = build_model(shape, tok, device)
        with tempfile.TemporaryDirectory(prefix="gpu-scale-") as work:
            hp, apply = PREPARE[method](model, tok, Path(work))

            def synced(*args, **kwargs):  # returns when the GPU is done, so that all of an edit is timed
                out = apply(*args, **kwargs)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out
            if device == "cuda":  # from here on, the host's editing (with the model in memory)
                torch.cuda.reset_peak_memory_stats()
            session = Session(types.SimpleNamespace(model=model, tok=tok, hparams=hp, apply_algo=synced,
                                                    alg_name=method, model_name=MODEL_NAME))
            for i, request in enumerate(reqs):
                with contextlib.redirect_stdout(io.StringIO()):  # the host prints at every step
                    seconds.append(session.apply(request))
                if (i + 1) % 10 == 0:
                    print(f"[{method}] {i + 1}/{len(reqs)} edits", file=sys.stderr, flush=True)
                if sum(seconds) > max_seconds:
                    break
    except Exception as error:  # noqa: BLE001
        where = traceback.extract_tb(error.__traceback__)[-1]
        row.update(status="failed", error=f"{type(error).__name__}: {error}"[:300]
                   + f" ({Path(where.filename).name}:{where.lineno})")
    row.update(edits=len(seconds), first_s=seconds[0] if seconds else None,
               median_s=statistics.median(seconds) if seconds else None,
               p90_s=statistics.quantiles(seconds, n=10, method="inclusive")[-1] if len(seconds) > 1
               else (seconds or [None])[0],
               peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edits", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=list(PREPARE), choices=list(PREPARE))
    p.add_argument("--max-seconds", type=float, default=float("inf"),
                   help="stop a method's sequence after this much editing time (a slow method on a short lease)")
    p.add_argument("--layers", type=int, default=32, help="model depth (fewer for a quicker run)")
    p.add_argument("--tokenizer", help="a tokenizer folder (default: the built-in SmolLM2's, built on first use)")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument("--fusion", default="additive", choices=["additive", "convex"], help="DAFNet's fusion of a sequence")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny LLaMA, 3 edits per method, on the CPU")
    args = p.parse_args()
    PREPARE["DAFNet"] = functools.partial(prepare_dafnet, fusion=args.fusion)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("gpu_scale needs a CUDA GPU and none is visible; --cpu-smoke checks the script on the CPU.")
    device, shape = ("cpu", dict(TINY)) if args.cpu_smoke else ("cuda", dict(LLAMA_7B, num_hidden_layers=args.layers))
    from dafnet_plugin.default_model import default_model_path  # imports the host with its fixes, adds DAFNet
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.tokenizer or default_model_path())
    tok.pad_token = tok.pad_token or tok.eos_token
    reqs, rows = requests(3 if args.cpu_smoke else args.edits), []
    for method in args.methods:
        rows.append(run_method(method, shape, tok, device, reqs, args.max_seconds))
        gc.collect()  # the method's model and state went with run_method's frame
        if device == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each row as soon as it is known
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, smoke run"
    print(f"\n## Sequential edits on a random LLaMA-2-7B-shaped model, bf16 ({where})\n\nShape: {shape}; vocab "
          f"{len(tok)}: the tokenizer's ({tok.name_or_path}), not LLaMA-2's 32000. DAFNet: llama-7b.yaml networks, "
          f"{args.fusion} fusion, untrained, fp32. ROME: mom2_adjustment false, right vector cast to bf16. MEMIT: identity second moments. "
          "MEND: untrained network from a fresh archive. The first edit includes each method's lazy set-up "
          "(networks, archive, statistics, context templates). Peak memory: from the first edit on, model included.\n")
    print("| method | edits | first edit s | median s/edit | p90 s/edit | peak GPU GiB | status |")
    print("|---|---:|---:|---:|---:|---:|---|")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        status = "ok" if r["status"] == "ok" else f"failed: {r['error']}".replace("|", "/")
        print(f"| {r['method']} | {r['edits']} | {fmt(r['first_s'], '.3f')} | {fmt(r['median_s'], '.3f')} "
              f"| {fmt(r['p90_s'], '.3f')} | {fmt(r['peak_gib'], '.2f')} | {status} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": where, "shape": shape, "vocab": len(tok), "rows": rows}))


if __name__ == "__main__":
    main()
