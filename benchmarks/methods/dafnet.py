"""DAFNet for the suite: meta-trained through the host's EditTrainer, cached by what defines it."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from dafnet_plugin import DAFNetHyperParams
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset, load_records
from dafnet_plugin.hparams import DAFNetTrainingHparams

from ..dev_split import DEV_SPLIT_SIZE, dev_records
from ..held_apart import write_if_changed
from ..saved_json import write_json
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
        EditTrainer(config=config, train_set=sources, val_set=dev_set(ctx, config)).run()  # resumes a cut run
        write_budget(checkpoint, config, time.perf_counter() - start, ctx.train_files)
        (work / "done").touch()
    return from_archive(ctx, str(checkpoint))


def dev_set(ctx: Context, config: DAFNetTrainingHparams) -> DAFSetDataset | list:
    """The dev split (benchmarks.dev_split: training-side records outside the pool DAFNet trains on),
    whose first dev_edits the training log scores; none where every training record is in the pool
    (said on stderr)."""
    try:
        records = dev_records(ctx.train_files, config.trunk_pool, DEV_SPLIT_SIZE)
    except ValueError as e:
        print(f"[dafnet] no dev-split scores in the training log: {e}", file=sys.stderr)
        return []
    path = ctx.cache_dir("dev-split", config.trunk_pool, DEV_SPLIT_SIZE) / "dev.json"
    write_if_changed(path, records)
    return DAFSetDataset(path, config=config)


def from_archive(ctx: Context, archive: str) -> DAFNetHyperParams:
    """The editing hparams of ``hparams/DAFNet/<hparams_name>.yaml`` with the DAFNet of ``archive``."""
    if not Path(archive).is_file():
        raise FileNotFoundError(f"hparams.DAFNet.archive: no file at {archive}")
    hparams = DAFNetHyperParams.from_hparams(f"hparams/DAFNet/{ctx.hparams_name}.yaml")
    hparams.model_name, hparams.archive = ctx.model_path, str(archive)
    return hparams


def kept_steps(log_lines: list[str]) -> tuple[dict[int, dict], float]:
    """The training log's entries of the steps the archive holds, and how long the earlier runs of a resumed
    training spent on them. Each run logs seconds since its own start; a resumed run steps again from its
    last checkpoint, so a step logged twice counts once, as its last run made it (the steps an earlier
    run made past that checkpoint were lost with it and are not the archive's)."""
    kept: dict[int, dict] = {}
    run, previous = 0, None
    for line in log_lines:
        entry = json.loads(line)
        if previous is not None and (entry.get("run_started") != previous.get("run_started") or
                                     entry["step"] <= previous["step"] or entry["seconds"] < previous["seconds"]):
            run += 1  # another run (logs written before run_started: it starts again from a checkpoint)
        same_run = previous is not None and run == previous["run"]
        elapsed = entry.get("step_s", entry["seconds"] - (previous["seconds"] if same_run else 0))
        kept[entry["step"]] = previous = {**entry, "run": run, "step_s": elapsed}
    earlier = sum(e["step_s"] for e in kept.values() if e["run"] < run)
    return kept, earlier


def write_budget(checkpoint: Path, config: DAFNetTrainingHparams, seconds: float, train_files: list[str]) -> None:
    """``<archive>.budget.json`` in the form MEND's and SERAC's take (benchmarks.methods.trained):
    steps, edits seen (the sequences' lengths summed), optimizer updates, wall seconds (the trunk
    cache included; for a resumed training, this run's wall time plus what the earlier runs spent on the
    steps the archive kept: an earlier run's trunk cache build is not in it)."""
    kept, earlier = kept_steps(checkpoint.with_suffix(".log.jsonl").read_text().splitlines())
    # distinct (prompt, target) edits of the training files; the cached trunk trains on trunk_pool of them
    distinct = len({(r["prompt"], r["target_new"]) for f in train_files for r in load_records(f)})
    budget = {"method": "DAFNet", "training_steps": len(kept), "batch_size": None,
              "edits_seen": sum(e["k"] for e in kept.values()),
              "distinct_edits": min(distinct, config.trunk_pool) if config.trunk_cache else distinct,
              "accumulate_bs": 1, "optimizer_updates": len(kept), "lr": config.lr, "archive_step": len(kept),
              "wall_s": round(seconds + earlier, 1), "train_steps_s": round(sum(e["step_s"] for e in kept.values()), 1),
              "resumed_runs": max((e["run"] for e in kept.values()), default=0),
              "threads": torch.get_num_threads(),
              "train_file": [Path(f).name for f in train_files],
              "sequence_length": f"1..{config.max_sequence} ({config.curriculum})",
              "trunk_cache": config.trunk_cache}
    write_json(f"{checkpoint}.budget.json", budget)
