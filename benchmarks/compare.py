"""The comparison suite: DAFNet against MEND, SERAC, ROME and MEMIT, single-turn and sequential,
edited and scored by EasyEdit itself.

    python -m benchmarks.compare --preset smollm2-cf [key=value ...]
    python -m benchmarks.compare --config my.yaml [key=value ...]

Each method is prepared (trained or its statistics computed, cached by content), then run through
the protocols of benchmarks/protocols.py. Results go to <out>/results.json, results.md and
metrics.png; a rerun skips the rows already there. A method that fails is a row with its reason.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

import dafnet_plugin  # registers DAFNet with EasyEdit
from dafnet_plugin.data.dafset import load_records
from dafnet_plugin.default_model import cache_root, resolve_model

from .config_checks import check_config, check_records
from .held_apart import held_apart_files
from .methods import build
from .methods.context import Context
from .methods.trained import training_budget
from .presets import PRESETS, CompareConfig
from .protocols import run_sequences
from .saved_json import read_json, write_json

METRICS = ("rewrite_acc", "rephrase_acc", "locality", "gen_em")


def load_config(preset: str | None, config_file: str | None, overrides: list[str]) -> CompareConfig:
    cfg = OmegaConf.structured(CompareConfig)
    if preset:
        if preset not in PRESETS:
            raise SystemExit(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        cfg = merge_setting(cfg, lambda: {"preset": preset, **PRESETS[preset]}, f"preset {preset}")
    if config_file:
        cfg = merge_setting(cfg, lambda: OmegaConf.load(config_file), config_file)
    cfg = merge_setting(cfg, lambda: OmegaConf.from_dotlist(overrides), "the command line")
    return OmegaConf.to_object(cfg)


def merge_setting(cfg, read, source: str):
    """``cfg`` with the settings ``read()`` gives merged in; a key that CompareConfig lacks or a value
    of the wrong type is one line naming the key and ``source``, not omegaconf's traceback."""
    try:
        return OmegaConf.merge(cfg, read())
    except FileNotFoundError:
        raise SystemExit(f"{source}: no such file") from None
    except yaml.YAMLError as error:
        raise SystemExit(f"{source}: not readable as YAML ({str(error).splitlines()[0]})") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "is not a ListConfig" in reason:
            reason = f"a list is written in brackets, e.g. {key}=[{getattr(error, 'value', '...')}]"
        raise SystemExit(f"{source}: key '{key}': {reason}") from None


def host_version() -> str:
    import easyeditor
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"easyeditor {version('easyeditor')} ({easyeditor.__file__})"
    except PackageNotFoundError:
        return f"easyeditor checkout ({easyeditor.__file__})"


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak so far


def run(cfg: CompareConfig) -> dict:
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    eval_file, train_files = cfg.eval, list(cfg.train)
    if cfg.held_apart:
        eval_file, train_files = held_apart_files(cfg.eval, train_files, cfg.held_apart, suite_cache(cfg) / "splits")
    records = load_records(eval_file)
    check_records(cfg, eval_file, records)
    out = Path(cfg.out or f"runs/{cfg.preset}")
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(cfg.model)
    path = out / "results.json"
    results = read_json(path) or {"rows": []}
    check_same_setup(path, results, asdict(cfg))
    results.update(preset=cfg.preset, model=cfg.model, dataset=cfg.dataset, host_version=host_version(),
                   device=torch.cuda.get_device_name() if cfg.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()})",
                   config=asdict(cfg))
    done = {(r["method"], r["protocol"], r["T"]) for r in results["rows"] if r["status"] == "ok"}
    results["rows"] = [r for r in results["rows"] if r["status"] == "ok"]  # failures are retried
    wall = results.setdefault("wall_s", {})  # per method: preparation and each T, in seconds
    ctx = context_of(cfg, model_path, train_files)
    plan = [(1, ("single",))] + [(T, ("immediate", "final")) for T in cfg.T]

    def save() -> None:
        write_json(path, results)

    for method in cfg.methods:
        todo = [(T, protocols) for T, protocols in plan if any((method, p, T) not in done for p in protocols)]
        left = [T for T, _ in todo if T > cfg.max_T.get(method, T)]
        if left:
            print(f"{method}: T={left} left for a later run (max_T.{method}={cfg.max_T[method]})")
            todo = [(T, protocols) for T, protocols in todo if T not in left]
        if not todo:
            continue
        start = time.perf_counter()
        try:
            editor = build_editor(method, ctx, cfg)
        except Exception as error:  # the method cannot run here: every row says why
            for T, protocols in todo:
                results["rows"] += [failed(method, p, T, error) for p in protocols]
            save()
            continue
        wall.setdefault(method, {})["prepare"] = round(time.perf_counter() - start, 1)
        budget = training_budget(editor.hparams)
        if budget is not None:  # what training this method's archive cost, for the table's reader
            results.setdefault("training", {})[method] = budget
        for T, protocols in todo:
            start = time.perf_counter()
            n = cfg.n_single if T == 1 else cfg.sequences * T
            try:
                with tqdm(total=n, desc=f"{method} T={T}") as bar:
                    rows = run_sequences(editor, records[:n], T, bar)
                for protocol, row in rows.items():
                    results["rows"].append({"method": method, "protocol": protocol, "T": T, **row,
                                            "peak_mem_mb": round(peak_memory_mb(cfg.device), 1),
                                            "status": "ok", "error": None})
            except Exception as error:
                results["rows"] += [failed(method, p, T, error) for p in protocols]
            wall[method][f"T={T}"] = round(time.perf_counter() - start, 1)
            save()
        del editor
    write_report(out, results)
    return results


def suite_cache(cfg: CompareConfig) -> Path:
    return Path(cfg.cache or cache_root() / "suite")


def context_of(cfg: CompareConfig, model_path: str | None = None, train_files: list[str] | None = None) -> Context:
    """What each method's preparation gets from this setup (``model_path``: cfg.model, resolved;
    ``train_files``: cfg.train, or what replaces it when records are held apart)."""
    return Context(model_path or resolve_model(cfg.model), cfg.hparams_name, list(train_files or cfg.train),
                   suite_cache(cfg), cfg.device, dict(cfg.steps), {m: dict(v) for m, v in cfg.training.items()})


# What a resumed run may change: which methods and lengths to add, and how fast it runs.
RESUMABLE_CHANGES = {"methods", "T", "max_T", "threads", "out", "cache", "preset"}
# Settings of one method: a change matters only where that method already has rows.
PER_METHOD = {"steps", "hparams", "training"}


def check_same_setup(path: Path, results: dict, now: dict) -> None:
    """Rows from another setup must not be mixed into this run's table (``results``: what
    ``path`` holds)."""
    before = results.get("config")
    if before is None:
        return
    changed = [k for k in before if k not in RESUMABLE_CHANGES | PER_METHOD and before[k] != now.get(k)]
    with_rows = sorted({r["method"] for r in results.get("rows", []) if r["status"] == "ok"})
    changed += [f"{k}.{m}" for k in sorted(PER_METHOD) for m in with_rows
                if (before.get(k) or {}).get(m) != (now.get(k) or {}).get(m)]
    if changed:
        raise SystemExit(f"{path} holds rows from a different setup (changed: {', '.join(changed)}); "
                         f"give another out=... or remove that file")


def build_editor(method: str, ctx: Context, cfg: CompareConfig):
    editor = build(method, ctx, cfg.hparams.get(method))
    if cfg.dtype != "float32":
        editor.model.to(getattr(torch, cfg.dtype))
    return editor


def failed(method: str, protocol: str, T: int, error: Exception) -> dict:
    reason = f"{type(error).__name__}: {error}".strip()
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    if where is not None:
        reason += f" ({Path(where.filename).name}:{where.lineno})"
    return {"method": method, "protocol": protocol, "T": T, "n_edits": 0, **{m: None for m in METRICS},
            "sec_per_edit": None, "peak_mem_mb": None, "status": "failed", "error": reason[:500]}


def write_report(out: Path, results: dict) -> None:
    rows = sorted(results["rows"], key=lambda r: (r["T"], ["single", "immediate", "final"].index(r["protocol"]), r["method"]))
    fmt = lambda v, spec=".3f": "–" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# {results['preset']}: {results['model']} on {results['dataset']}", "",
             f"Device: {results['device']}. Host: {results['host_version']}.", "",
             "| T | protocol | method | n | rewrite | rephrase | locality | gen EM | s/edit | peak MB | status |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        status = "ok" if r["status"] == "ok" else f"failed: {r['error']}"
        lines.append(f"| {r['T']} | {r['protocol']} | {r['method']} | {r['n_edits']} | {fmt(r['rewrite_acc'])} | "
                     f"{fmt(r['rephrase_acc'])} | {fmt(r['locality'])} | {fmt(r['gen_em'])} | "
                     f"{fmt(r['sec_per_edit'], '.2f')} | {fmt(r['peak_mem_mb'], '.0f')} | {status} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(out / "metrics.png", rows)


def plot(path: Path, rows: list[dict]) -> None:
    """Each metric against T, one line per method: the single-turn value at T = 1, then the
    final (after the whole sequence) values. The last panel: in the longest sequence, each edit's
    immediate rewrite accuracy against its place in the sequence, where a fusion that divides
    edit t by t shows as a 1/t curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(4 * (len(METRICS) + 1), 3.4))
    methods = sorted({r["method"] for r in rows})
    for ax, metric in zip(axes, METRICS):
        for method in methods:
            points = sorted((r["T"], r[metric]) for r in rows if r["method"] == method and r["status"] == "ok"
                            and r["protocol"] in ("single", "final") and r[metric] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set_xscale("log"), ax.set_xlabel("T (edits in sequence)"), ax.set_title(metric), ax.set_ylim(-0.02, 1.02)
    by_position = [r for r in rows if r["status"] == "ok" and r.get("rewrite_by_position")]
    if by_position:
        longest = max(r["T"] for r in by_position)
        ax = axes[-1]
        for r in sorted(by_position, key=lambda r: r["method"]):
            if r["T"] == longest:
                curve = r["rewrite_by_position"]
                window = max(1, longest // 20)  # a moving mean over 5% of the sequence
                smooth = [sum(curve[max(0, i - window + 1):i + 1]) / len(curve[max(0, i - window + 1):i + 1])
                          for i in range(len(curve))]
                ax.plot(range(1, len(curve) + 1), smooth, label=r["method"])
        ax.set_xlabel(f"position t in the sequence (T = {longest})"), ax.set_title("immediate rewrite at t")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--config", help="a YAML with CompareConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. T=[10,100] methods=[DAFNet,ROME]")
    args = p.parse_args()
    results = run(load_config(args.preset, args.config, args.overrides))
    print((Path(results["config"]["out"] or f"runs/{results['preset']}") / "results.md").read_text())


if __name__ == "__main__":
    main()
