"""What DAFNet costs: network sizes per YAML (no model loaded), and CPU seconds per sequential edit.

    python -m benchmarks.cost [--yaml hparams/DAFNet/gpt-j-6B.yaml ...] [--edits 20]
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from dafnet_plugin import DAFNetHyperParams, DAFNetNetwork, EditBatch, attach, tokenize_edits
from dafnet_plugin.hparams import load_strict

# (hidden size, MLP size) from each model's published config, so no big model is downloaded
KNOWN = {"gpt2-xl": (1600, 6400), "EleutherAI/gpt-j-6B": (4096, 16384), "meta-llama/Llama-2-7b-hf": (4096, 11008),
         "smollm2-135m": (576, 1536), "tiny-gpt2": (32, 128)}
UP = ("c_fc", "fc_in", "gate_proj", "up_proj")  # hidden -> MLP; the rest (c_proj, fc_out, down_proj) go back
EDITS = [("The capital of France is", "Rome"), ("The Eiffel Tower is located in", "London"),
         ("The currency of Japan is", "euro"), ("Apple was founded by", "Bill Gates"),
         ("The official language of Brazil is", "German"), ("The president of the United States lives in", "Berlin"),
         ("Water boils at a temperature of", "50 degrees"), ("The largest planet in the solar system is", "Mars")]
MIB = 2 ** 20


def module_shape(name: str, hidden: int, mlp: int) -> tuple[int, int]:
    module = name.removesuffix(".weight")  # the YAMLs name the edited weights, EasyEdit's way
    return (hidden, mlp) if module.rsplit(".", 1)[-1] in UP else (mlp, hidden)


def size_rows(path: str) -> tuple[list[str], int]:
    """Markdown rows for one YAML (one per network, then its total) and its total parameter count."""
    hp = load_strict(DAFNetHyperParams, path)  # no resolve_model: nothing is fetched
    hidden, mlp = KNOWN[hp.model_name]
    groups: dict[tuple[int, int], int] = {}
    for name in hp.inner_params:
        shape = module_shape(name, hidden, mlp)
        groups[shape] = groups.get(shape, 0) + 1
    rows, total, delta_all, vec_all = [], 0, 0, 0
    for (d_in, d_out), n_modules in groups.items():
        with torch.device("meta"):  # exact count from the real class, no memory allocated
            net = DAFNetNetwork(d_in, d_out, hp.network_config(), n_modules)
        params = sum(p.numel() for p in net.parameters())
        delta, vec = d_in * d_out * 4, hp.n_layers * (d_in + d_out) * 4  # fp32 ΔW; one vector per layer per edit
        total, delta_all, vec_all = total + params, delta_all + n_modules * delta, vec_all + n_modules * vec
        rows.append(f"| {Path(path).name} | {d_in}×{d_out} | {n_modules} | {params:,} | {params * 4 / MIB:,.1f} "
                    f"| {delta / MIB:,.2f} | {vec / 1024:,.1f} |")
    rows.append(f"| {Path(path).name} | **all {len(groups)}** | {len(hp.inner_params)} | **{total:,}** "
                f"| **{total * 4 / MIB:,.1f}** | {delta_all / MIB:,.2f} (all modules) "
                f"| {vec_all / 1024:,.1f} (all modules) |")
    return rows, total


def tiny_model(workdir: str) -> tuple[torch.nn.Module, GPT2Tokenizer]:
    """A random 2-layer GPT-2 (n_embd 32) with a byte-level BPE trained here, as tests/conftest.py does."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([f"{p} {t}." for p, t in EDITS] * 4, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)  # it draws on stdout
    bpe.save_model(workdir)
    tok = GPT2Tokenizer(f"{workdir}/vocab.json", f"{workdir}/merges.txt")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval(), tok


def time_edits(label: str, model: torch.nn.Module, tok, hp: DAFNetHyperParams, n: int) -> str:
    """One Markdown row: n sequential single edits after a warm-up edit, timed per edit."""
    before = sum(p.numel() for p in model.parameters())
    editor = attach(model, hp)
    after = sum(p.numel() for p in model.parameters())
    assert before == after, f"attaching DAFNet changed the model's size: {before} -> {after}"
    # time the gradient-signal pass inside edit(); the rest of edit() is the networks and the ΔW update
    grad_times: list[float] = []
    signals = editor.gradient_signals

    def timed_signals(batch: EditBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        start = time.perf_counter()
        out = signals(batch)
        grad_times.append(time.perf_counter() - start)
        return out

    editor.gradient_signals = timed_signals
    batches = [tokenize_edits(tok, [p], [t], hp.max_length) for p, t in (EDITS * n)[:n]]
    totals: list[float] = []
    with torch.no_grad():
        editor.edit(batches[0])  # warm-up: first-call allocations and kernel set-up
        editor.reset()
        grad_times.clear()
        for batch in tqdm(batches, desc=label, unit="edit"):
            start = time.perf_counter()
            editor.edit(batch)
            totals.append(time.perf_counter() - start)
    assert editor.n_edits == n
    net_times = [t - g for t, g in zip(totals, grad_times)]
    p90 = statistics.quantiles(totals, n=10)[-1] if n > 1 else totals[0]
    grad_share = sum(grad_times) / sum(totals)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return (f"| {label} | {before:,} | {after:,} | {n} | {statistics.median(totals):.4f} | {p90:.4f} "
            f"| {statistics.median(grad_times):.4f} ({grad_share:.0%}) | {statistics.median(net_times):.4f} "
            f"({1 - grad_share:.0%}) | {rss:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yaml", nargs="+", default=sorted(glob.glob("hparams/DAFNet/*.yaml")))
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)

    print("## Auxiliary networks (one per weight shape of the edited modules; built on `meta`)\n")
    print("| YAML | network d_in×d_out | modules | parameters | fp32 MiB | ΔW per module, fp32 MiB "
          "| memory per edit per module, KiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    totals = {}
    for path in args.yaml:
        rows, total = size_rows(path)
        totals[Path(path).name] = (total, len(rows) - 1)  # the last row is the YAML's total
        print("\n".join(rows))
    if "gpt-j-6B.yaml" in totals:
        total, n_networks = totals["gpt-j-6B.yaml"]
        print(f"\nGPT-J-6B: {total / n_networks / 1e6:,.0f}M per network ({n_networks}), {total / 1e9:.2f}B in all; "
              "the DAFNet authors report about 630M per network, about 1.26B in all.")

    print("\n## CPU time per sequential edit, untrained network, 2 threads\n")
    # other processes on the machine inflate these times; the load average says how much they may have
    print(f"Load average (1 min) before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n")
    print("| config | model params before attach | after | edits | median s/edit | p90 s/edit "
          "| gradient pass, median s (share) | network + ΔW, median s (share) | peak RSS so far, MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    tiny_hp = load_strict(DAFNetHyperParams, "hparams/DAFNet/tiny-gpt2.yaml")
    with tempfile.TemporaryDirectory() as workdir:
        model, tok = tiny_model(workdir)
        print(time_edits("tiny-gpt2", model, tok, tiny_hp, args.edits), flush=True)
    hp = DAFNetHyperParams.from_hparams("hparams/DAFNet/smollm2-135m.yaml")  # resolves the cached model
    model = AutoModelForCausalLM.from_pretrained(hp.model_name, dtype=torch.float32).eval()
    print(time_edits("smollm2-135m", model, AutoTokenizer.from_pretrained(hp.model_name), hp, args.edits))


if __name__ == "__main__":
    main()
