"""How each method is prepared for the suite: ``build(name, ctx)`` returns the host's
``BaseEditor`` for it, after training it or computing its statistics (cached by content)."""
from __future__ import annotations

from typing import Callable

from .context import Context


def _dafnet(ctx: Context):
    from .dafnet import prepare
    return prepare(ctx)


# MEND and SERAC train on the first of the training files (the task's own train split, as the host
# trains them); DAFNet on all of them, since its authors' DAFSet is part of their method.
def _trained_settings(ctx: Context, method: str) -> dict:
    """The method's training settings; the locality loss read at the answer (trained.py) unless
    they say otherwise, named so that archives trained with the host's window are not reused."""
    return {"locality_at_answer": True, **ctx.training.get(method, {})}


def _mend(ctx: Context):
    from .trained import n_layers_of, parse_layers, train_mend

    steps, settings = ctx.steps.get("MEND", 200), _trained_settings(ctx, "MEND")
    if "layers" in settings:  # "last3", "14-16" or "3+9", as benchmarks.sweep_mend names them
        settings["layers"] = parse_layers(settings["layers"], n_layers_of(ctx.model_path))
    return train_mend(ctx.model_path, ctx.train_files[0], ctx.cache_dir("MEND", steps, settings), steps, **settings)


def _serac(ctx: Context):
    from .trained import minilm_path, train_serac

    # the counterfactual model must share the edited model's tokenizer: the edited model itself
    steps, settings = ctx.steps.get("SERAC", 200), _trained_settings(ctx, "SERAC")
    return train_serac(ctx.model_path, ctx.train_files[0], ctx.cache_dir("SERAC", steps, settings), steps,
                       minilm_path(), ctx.model_path, **settings)


def _locate_then_edit(alg: str) -> Callable[[Context], object]:
    def prepare(ctx: Context):
        from .locate_edit import prepare as prepare_locate_edit
        return prepare_locate_edit(alg, ctx)
    return prepare


PREPARE: dict[str, Callable[[Context], object]] = {
    "DAFNet": _dafnet, "MEND": _mend, "SERAC": _serac,
    "ROME": _locate_then_edit("ROME"), "MEMIT": _locate_then_edit("MEMIT"),
}


def build(method: str, ctx: Context, overrides: dict | None = None):
    """The host's editor for ``method``, prepared; ``overrides`` replace fields of its host hparams
    (editing-time ones: training and statistics are prepared from the method's own defaults)."""
    from easyeditor import BaseEditor

    if method not in PREPARE:
        raise KeyError(f"unknown method '{method}'; known: {', '.join(PREPARE)}")
    overrides = dict(overrides or {})
    if method == "DAFNet" and overrides.get("archive"):
        # a trained DAFNet given by its archive edits as it is: nothing is trained
        from .dafnet import from_archive
        hparams = from_archive(ctx, overrides.pop("archive"))
    else:
        hparams = PREPARE[method](ctx)
    for key, value in overrides.items():
        if not hasattr(hparams, key):
            raise KeyError(f"hparams.{method}.{key}: {type(hparams).__name__} has no field '{key}'")
        setattr(hparams, key, value)
    editor = BaseEditor.from_hparams(hparams)
    if method in ("MEND", "SERAC"):
        from .trained import bind_fresh_executor
        bind_fresh_executor(editor)  # the host shares one executor per process across editors
    return editor
