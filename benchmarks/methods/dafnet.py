"""DAFNet for the suite: meta-trained through the host's EditTrainer, cached by what defines it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dafnet_plugin import DAFNetHyperParams
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset, load_records
from dafnet_plugin.hparams import DAFNetTrainingHparams

from .context import Context


def prepare(ctx: Context) -> DAFNetHyperParams:
    training_yaml = f"hparams/TRAINING/DAFNet/{ctx.hparams_name}.yaml"
    edit_yaml = f"hparams/DAFNet/{ctx.hparams_name}.yaml"
    steps = ctx.steps.get("DAFNet")
    work = ctx.cache_dir("DAFNet", Path(training_yaml).read_text(), Path(edit_yaml).read_text(), steps)
    config = DAFNetTrainingHparams.from_hparams(training_yaml)
    config.model_name = config.tokenizer_name = ctx.model_path
    config.results_dir = str(work)
    if steps is not None:
        config.max_iters = steps
    checkpoint = work / "models" / "DAFNet" / f"{Path(ctx.model_path).name}.pt"
    if not (checkpoint.exists() and (work / "done").exists()):
        from easyeditor import EditTrainer

        start = time.perf_counter()
        sources = MixtureDataset({Path(p).stem: DAFSetDataset(p, config=config) for p in ctx.train_files})
        first = next(iter(sources.sources.values()))
        EditTrainer(config=config, train_set=sources, val_set=first).run()  # resumes a cut run
        write_budget(checkpoint, config, time.perf_counter() - start, ctx.train_files)
        (work / "done").touch()
    return from_archive(ctx, str(checkpoint))


def from_archive(ctx: Context, archive: str) -> DAFNetHyperParams:
    """The editing hparams of ``hparams/DAFNet/<hparams_name>.yaml`` with the DAFNet of ``archive``."""
    if not Path(archive).is_file():
        raise FileNotFoundError(f"hparams.DAFNet.archive: no file at {archive}")
    hparams = DAFNetHyperParams.from_hparams(f"hparams/DAFNet/{ctx.hparams_name}.yaml")
    hparams.model_name, hparams.archive = ctx.model_path, str(archive)
    return hparams


def write_budget(checkpoint: Path, config: DAFNetTrainingHparams, seconds: float, train_files: list[str]) -> None:
    """``<archive>.budget.json`` in the form MEND's and SERAC's take (benchmarks.methods.trained):
    steps, edits seen (the sequences' lengths summed), optimizer updates, wall seconds (the trunk
    cache included; a resumed run counts only its own part)."""
    steps = {}
    log = checkpoint.with_suffix(".log.jsonl")
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        steps[entry["step"]] = entry["k"]  # a resumed run may log a step twice: the last one counts
    # distinct (prompt, target) edits of the training files; the cached trunk trains on trunk_pool of them
    distinct = len({(r["prompt"], r["target_new"]) for f in train_files for r in load_records(f)})
    budget = {"method": "DAFNet", "training_steps": len(steps), "batch_size": None,
              "edits_seen": sum(steps.values()),
              "distinct_edits": min(distinct, config.trunk_pool) if config.trunk_cache else distinct,
              "accumulate_bs": 1, "optimizer_updates": len(steps), "lr": config.lr, "archive_step": len(steps),
              "wall_s": round(seconds, 1), "threads": torch.get_num_threads(),
              "train_file": [Path(f).name for f in train_files],
              "sequence_length": f"1..{config.max_sequence} ({config.curriculum})",
              "trunk_cache": config.trunk_cache}
    Path(f"{checkpoint}.budget.json").write_text(json.dumps(budget, indent=1))
