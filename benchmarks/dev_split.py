"""A development split for choosing DAFNet's training settings without reading the evaluation file.

DAFNet's cached-trunk training only ever sees the first ``trunk_pool`` distinct records of its training
files (``dafnet_plugin.training.distinct_pool``). The dev split is the last ``--n`` records of the first
training file that lie outside that pool and share no subject with it: facts (and subjects) DAFNet never
trained on, drawn from the training side. Settings are compared here first; ``counterfact-val.json`` only
scores the one chosen.

    python -m benchmarks.dev_split                       # the smollm2-cf preset's files -> the path printed
    python -m benchmarks.compare --preset smollm2-cf methods=[DAFNet] eval=<that path> out=runs/dafnet-dev
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from dafnet_plugin.data.dafset import load_records
from dafnet_plugin.default_model import cache_root
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training import distinct_pool

from .held_apart import write_if_changed
from .presets import PRESETS

DEV_SPLIT_SIZE = 100


def dev_records(train_files: Sequence[str], trunk_pool: int, n: int) -> list[dict]:
    """The last ``n`` records of ``train_files[0]`` (in EasyEdit's form) outside DAFNet's training pool."""
    sources = {Path(f).stem: load_records(f) for f in train_files}
    pool = [r for records in distinct_pool(sources, trunk_pool).values() for r in records]
    seen_edits = {(r["prompt"], r["target_new"]) for r in pool}
    seen_subjects = {r.get("subject") for r in pool}
    outside = [r for r in sources[Path(train_files[0]).stem]
               if (r["prompt"], r["target_new"]) not in seen_edits and r.get("subject") not in seen_subjects]
    if len(outside) < n:
        raise ValueError(f"{train_files[0]}: only {len(outside)} records lie outside the first {trunk_pool} "
                         f"distinct training records; asked for {n}")
    return outside[-n:]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smollm2-cf", help="whose training files and YAML to follow")
    parser.add_argument("--n", type=int, default=DEV_SPLIT_SIZE, help="records in the dev split")
    parser.add_argument("--out", help="default <DAFNET_CACHE or ~/.cache/dafnet-easyedit>/data/cf-dev-<n>.json")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    config = DAFNetTrainingHparams.from_hparams(f"hparams/TRAINING/DAFNet/{preset['hparams_name']}.yaml")
    records = dev_records(preset["train"], config.trunk_pool, args.n)
    out = Path(args.out or cache_root() / "data" / f"cf-dev-{args.n}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(out, records)
    print(out)
    return out


if __name__ == "__main__":
    main()
