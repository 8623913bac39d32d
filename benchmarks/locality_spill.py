"""Where a sequence's locality loss goes: after T edits in sequence, which locality prompts answer
differently from the unedited model, and what they answer instead.

    python -m benchmarks.locality_spill --archive <DAFNet archive> --records <CounterFact-form JSON>
    (defaults: the smollm2-135m editing YAML, the first 100 records, one sequence of all of them)

For each record's locality prompt it compares the first answer token before and after the whole
sequence, and sorts each change as: the record's own new target (the edit bleeds onto the neighbour
that shares its relation and old answer), another edit's new target (a relation-wide spill), or
anything else (the neighbour's answer distorted). Writes the counts and the changed prompts as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dafnet_plugin import DAFNetHyperParams, attach, tokenize_edits
from dafnet_plugin.data.dafset import load_records


def first_answer_tokens(model, tok, prompts: list[str], answers: list[str]) -> list[int]:
    """The model's argmax at the position that predicts each answer's first token."""
    batch = tokenize_edits(tok, prompts, answers).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    first = (batch.labels != -100).int().argmax(-1)             # each row's first answer position
    return logits[torch.arange(len(prompts)), first - 1].argmax(-1).tolist()


def spill(editor, tok, records: list[dict]) -> dict:
    """Edit ``records`` in one sequence with ``editor`` (DAFNet on its model) and sort the changes."""
    model = editor.model
    prompts = [r["locality_prompt"] for r in records]
    answers = [r["locality_ground_truth"] for r in records]
    new_first = [tok(" " + r["target_new"])["input_ids"][0] for r in records]
    editor.reset()
    before = first_answer_tokens(model, tok, prompts, answers)
    with torch.no_grad():
        for r in records:
            editor.edit(tokenize_edits(tok, [r["prompt"]], [r["target_new"]]))
    after = first_answer_tokens(model, tok, prompts, answers)
    editor.reset()
    rows, counts = [], {"own_target": 0, "other_target": 0, "elsewhere": 0}
    for i, (b, a) in enumerate(zip(before, after)):
        if a == b:
            continue
        kind = "own_target" if a == new_first[i] else "other_target" if a in new_first else "elsewhere"
        counts[kind] += 1
        rows.append({"locality_prompt": prompts[i], "before": tok.decode(b), "after": tok.decode(a),
                     "before_id": b, "after_id": a,
                     "own_target": records[i]["target_new"], "kind": kind})
    return {"n": len(records), "changed": len(rows), **counts, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hparams", default="hparams/DAFNet/smollm2-135m.yaml")
    p.add_argument("--archive", required=True)
    p.add_argument("--records", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--protect-keys", type=float, default=None, help="overrides the YAML's protect_keys")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/locality_spill.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hp = DAFNetHyperParams.from_hparams(args.hparams)
    hp.archive = args.archive
    if args.protect_keys is not None:
        hp.protect_keys = args.protect_keys
    tok = AutoTokenizer.from_pretrained(hp.model_name)
    model = AutoModelForCausalLM.from_pretrained(hp.model_name).eval()
    result = {"archive": args.archive, "records": args.records, "protect_keys": hp.protect_keys,
              **spill(attach(model, hp), tok, load_records(args.records)[: args.n])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{result['changed']}/{result['n']} locality prompts answer differently after the sequence: "
          f"{result['own_target']} with their own record's new target, {result['other_target']} with another "
          f"edit's, {result['elsewhere']} otherwise")


if __name__ == "__main__":
    main()
