"""SERAC's scope threshold, chosen on training data.

The host's SERAC calls a prompt in scope of a stored edit when exp(-scale * d²) > 0.5, with d the
distance between their classifier embeddings and ``scale`` a buffer fixed at 1.0: a prompt is in scope
when d² < ln 2, whatever the classifier's embedding norms are. A few hundred CPU training steps leave
the MiniLM classifier's rephrases far outside that radius (issue 11: single-turn rephrase 0.05).

``calibrate`` measures, with the host's own classifier code, d² between held-apart *training* records'
edit prompts and their rephrases (in scope) and their locality prompts (out of scope), puts the radius
where at most ``FALSE_HITS`` of the locality prompts fall inside, and writes the matching ``scale`` into
the archive, where the host's SERAC reads it. The evaluation file is never read.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch

from ..saved_json import read_json, write_json

FALSE_HITS = 0.05      # share of training locality prompts the chosen radius may take for in scope
CALIBRATION_RECORDS = 200


def scope_path(archive: str | os.PathLike) -> Path:
    return Path(f"{archive}.scope.json")


def squared_distances(hp, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """d² from each record's stored edit to its own rephrase and to its own locality prompt, as the
    host's ``SERAC.embedding_logsim_matrix`` computes them (teacher-forced inputs: prompt and answer)."""
    from easyeditor.trainer import SERAC
    from transformers import AutoModelForCausalLM

    from dafnet_plugin.host import cuda_strings_on_cpu

    model = AutoModelForCausalLM.from_pretrained(hp.model_name)
    # the host sends SERAC's parts to f"cuda:{device}": on a CPU-only machine, to the CPU
    with cuda_strings_on_cpu(factories=False):
        serac = SERAC(model, copy.deepcopy(hp), lambda: model)  # the counterfactual model is not run here
    state = torch.load(hp.archive, map_location="cpu", weights_only=True)["model"]
    serac.load_state_dict(state, strict=False)
    serac.classifier.eval()
    serac.scale = torch.ones((), device=serac.scale.device)  # log-similarities are then -d²
    serac.cache_inputs = [f"{r['prompt']} {r['target_new']}" for r in records]
    stored = serac.build_cls_cache_inputs()  # the host cuts the answer off again
    rephrases = [f"{r['rephrase_prompt']} {r['target_new']}" for r in records]
    neighbours = [f"{r['locality_prompt']} {r['locality_ground_truth']}" for r in records]
    with torch.no_grad(), cuda_strings_on_cpu():
        in_scope = -serac.embedding_logsim_matrix(stored, rephrases).diagonal()
        out_of_scope = -serac.embedding_logsim_matrix(stored, neighbours).diagonal()
    return in_scope.float().cpu(), out_of_scope.float().cpu()


def choose_radius(in_scope: torch.Tensor, out_of_scope: torch.Tensor, false_hits: float = FALSE_HITS) -> dict:
    """The largest d² radius that takes at most ``false_hits`` of ``out_of_scope`` for in scope, and
    what it gives on these records."""
    ordered = out_of_scope.sort().values
    allowed = int(math.floor(false_hits * len(ordered)))
    # strictly below the (allowed+1)-th smallest out-of-scope distance
    radius = ordered[allowed].item() if allowed < len(ordered) else ordered[-1].item() * 2

    def share(d: torch.Tensor, r: float) -> float:
        return int((d < r).sum()) / len(d)

    return {"radius_d2": radius, "scale": math.log(2) / radius,
            "rephrase_hits": share(in_scope, radius), "locality_false_hits": share(out_of_scope, radius),
            "host_radius_hits": share(in_scope, math.log(2)),
            "host_radius_false_hits": share(out_of_scope, math.log(2))}


def calibrate(hp, train_json: str | os.PathLike, n: int = CALIBRATION_RECORDS,
              false_hits: float = FALSE_HITS) -> dict:
    """Choose SERAC's scope radius on the last ``n`` records of ``train_json`` and write its scale into
    ``hp.archive``; done once per archive (``<archive>.scope.json`` records it)."""
    path = scope_path(hp.archive)
    chosen = read_json(path)
    if chosen is not None:
        return chosen
    from dafnet_plugin.data.dafset import load_records

    records = load_records(train_json)[-n:]  # CounterFact or MEND ZsRE form alike
    if len(records) < 20:
        raise ValueError(f"{train_json}: {len(records)} records are too few to choose SERAC's scope on")
    in_scope, out_of_scope = squared_distances(hp, records)
    chosen = choose_radius(in_scope, out_of_scope, false_hits) | {
        "records": len(records), "from": f"the last {len(records)} records of {Path(train_json).name}",
        "false_hits_allowed": false_hits}
    archive = torch.load(hp.archive, map_location="cpu", weights_only=True)
    archive["model"]["scale"] = torch.tensor(chosen["scale"])
    partial = Path(f"{hp.archive}.partial")
    torch.save(archive, partial)
    os.replace(partial, hp.archive)
    write_json(path, chosen)
    return chosen
