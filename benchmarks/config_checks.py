"""The comparison suite's configuration, checked before any model is loaded or trained.

A suite run can spend hours training before it reaches the method whose settings are wrong, and some
mistakes (a misspelt method name in a per-method key, T = 0, an evaluation file shorter than T) give
no error at all, only rows that look fine. Each check here ends the run with one line that names the
key and what it expects.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from dafnet_plugin.archives import check_archive

from .methods import PREPARE
from .presets import CompareConfig

# Keys whose entries are per method: each entry's name must be a method the suite knows.
PER_METHOD_KEYS = ("steps", "max_T", "hparams", "training")
DTYPES = ("float32", "float16", "bfloat16")
TRAINED_METHODS = ("MEND", "SERAC")  # methods whose training the suite drives with training.<method>.*
SUBJECT_METHODS = ("ROME", "MEMIT")  # they write at the subject's last token in the prompt


def _dafnet_hparams_class() -> type:
    from dafnet_plugin.hparams import DAFNetHyperParams
    return DAFNetHyperParams


def _host():
    """EasyEdit's package, or None where it is not installed (building a method then says so)."""
    from dafnet_plugin.host import import_easyeditor
    return import_easyeditor()


def _host_hparams_class(name: str) -> Callable[[], type | None]:
    def load() -> type | None:
        host = _host()
        return getattr(host, name, None) if host is not None else None
    return load


# Each method's editing hparams class, which hparams.<method>.<field> overrides set fields of.
HPARAMS_CLASSES: dict[str, Callable[[], type | None]] = {
    "DAFNet": _dafnet_hparams_class, "MEND": _host_hparams_class("MENDHyperParams"),
    "SERAC": _host_hparams_class("SERACHparams"), "ROME": _host_hparams_class("ROMEHyperParams"),
    "MEMIT": _host_hparams_class("MEMITHyperParams"),
}


def _fail(message: str) -> None:
    raise SystemExit(f"configuration: {message}")


def _at_least_one(key: str, value: int) -> None:
    if value < 1:
        _fail(f"{key} must be at least 1, not {value}")


def check_config(cfg: CompareConfig) -> None:
    """Every setting that can be judged without loading a model or reading the evaluation file."""
    if not isinstance(cfg.methods, list):
        _fail(f"methods must be a list, e.g. methods=[{cfg.methods}], not '{cfg.methods}'")
    known = ", ".join(PREPARE)
    for method in cfg.methods:
        if method not in PREPARE:
            _fail(f"methods: no method '{method}'; known: {known}")
    for key in PER_METHOD_KEYS:
        for method in getattr(cfg, key):
            if method not in PREPARE:
                _fail(f"{key}.{method}: no method '{method}'; known: {known}")
    for T in cfg.T:
        _at_least_one("each T", T)
    repeated = sorted({T for T in cfg.T if cfg.T.count(T) > 1})
    if repeated:
        _fail(f"T lists {', '.join(map(str, repeated))} more than once; each length runs once")
    for key in ("n_single", "sequences", "threads"):
        _at_least_one(key, getattr(cfg, key))
    for key in ("max_T", "steps"):
        for method, value in getattr(cfg, key).items():
            _at_least_one(f"{key}.{method}", value)
    for method in cfg.steps:
        if method not in ("DAFNet", *TRAINED_METHODS):  # ROME and MEMIT train nothing
            _fail(f"steps.{method}: {method} does not train; steps are for DAFNet, {', '.join(TRAINED_METHODS)}")
    if cfg.dtype not in DTYPES:
        _fail(f"dtype must be one of {', '.join(DTYPES)}, not '{cfg.dtype}'")
    if cfg.held_apart < 0:
        _fail(f"held_apart must be 0 (none) or a number of records, not {cfg.held_apart}")
    for path in [cfg.eval, *cfg.train]:
        if not Path(path).is_file():
            _fail(f"no data file at {path}")
    for method, overrides in cfg.hparams.items():
        _check_hparams_overrides(method, overrides)
    for method, settings in cfg.training.items():
        _check_training_settings(method, settings)


def _check_hparams_overrides(method: str, overrides: dict) -> None:
    load = HPARAMS_CLASSES.get(method)
    hparams_class = load() if load else None
    if hparams_class is None:
        return
    fields = {f.name for f in dataclasses.fields(hparams_class)}
    for field in overrides:
        if field not in fields:
            _fail(f"hparams.{method}.{field}: {hparams_class.__name__} has no field '{field}'")
    archive = overrides.get("archive")
    if method == "DAFNet" and archive:
        try:
            check_archive(archive, "hparams.DAFNet.archive")
        except (OSError, ValueError) as error:
            _fail(str(error))


def _check_training_settings(method: str, settings: dict) -> None:
    if method not in TRAINED_METHODS:  # DAFNet trains from its YAML; ROME and MEMIT do not train
        _fail(f"training.{method}: only {', '.join(TRAINED_METHODS)} take training settings here")
    if _host() is None:
        return
    from .methods.trained import training_keys
    known = training_keys(method)
    for key in settings:
        if key not in known:
            _fail(f"training.{method}.{key}: not a training setting of {method} "
                  f"(see benchmarks.methods.trained.train_{method.lower()})")


def check_records(cfg: CompareConfig, eval_file: str, records: list[dict]) -> None:
    """The evaluation file holds the edits of the longest sequence and of the single-turn protocol (a
    shorter file would score fewer edits than the rows say), each with a subject in its prompt where a
    method edits at the subject (without one the host falls back to the prompt's first word)."""
    needs = {"n_single": cfg.n_single}
    if cfg.T:
        needs[f"T={max(cfg.T)} x sequences={cfg.sequences}"] = max(cfg.T) * cfg.sequences
    source = f" (the last held_apart={cfg.held_apart} records of {cfg.eval})" if cfg.held_apart else ""
    for what, n in needs.items():
        if n > len(records):
            _fail(f"{eval_file}{source} holds {len(records)} records; {what} needs {n}")
    at_subject = [m for m in cfg.methods if m in SUBJECT_METHODS]
    for i, record in enumerate(records[:max(needs.values())] if at_subject else []):
        subject = record.get("subject")
        if not subject or subject not in record["prompt"]:
            found = f"its subject {subject!r} is not in" if subject else "it has no subject for"
            _fail(f"{eval_file}{source} record {i}: {' and '.join(at_subject)} edit at the subject, but "
                  f"{found} the prompt {record['prompt']!r}")
