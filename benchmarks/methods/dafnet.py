"""DAFNet for the suite: meta-trained through the host's EditTrainer, cached by what defines it."""
from __future__ import annotations

from pathlib import Path

from dafnet_plugin import DAFNetHyperParams
from dafnet_plugin.data.dafset import DAFSetDataset, MixtureDataset
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

        sources = MixtureDataset({Path(p).stem: DAFSetDataset(p, config=config) for p in ctx.train_files})
        first = next(iter(sources.sources.values()))
        EditTrainer(config=config, train_set=sources, val_set=first).run()  # resumes a cut run
        (work / "done").touch()
    hparams = DAFNetHyperParams.from_hparams(edit_yaml)
    hparams.model_name, hparams.archive = ctx.model_path, str(checkpoint)
    return hparams
