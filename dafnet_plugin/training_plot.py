"""The picture of a DAFNet training log: each loss term and the dev-split scores against the step,
written beside the archive at every checkpoint, so that anyone can tell whether more steps would
still help."""
from __future__ import annotations

import json
from pathlib import Path

LOSS_TERMS = (("loss/edit", "edit NLL"), ("loss/rephrase", "rephrase NLL"), ("loss/loc", "locality KL"))
DEV_SCORES = (("dev/rewrite", "rewrite"), ("dev/locality", "locality"))


def smoothed(values: list[float], decay: float = 0.05) -> list[float]:
    """Exponential moving average: one step's loss depends on the sequence drawn, the trend does not."""
    out, current = [], values[0] if values else 0.0
    for v in values:
        current += decay * (v - current)
        out.append(current)
    return out


def read_log(path: str | Path) -> list[dict]:
    """The log's entries, the last run's for a step logged twice (a resumed run repeats the steps
    after its last checkpoint)."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return [by_step[s] for s in sorted(by_step)]


def plot_training_log(log_path: str | Path, out: str | Path) -> Path | None:
    """Write the plot of ``log_path`` to ``out`` (PNG); None when the log is empty or matplotlib,
    an optional dependency of the plugin, is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    log = read_log(log_path) if Path(log_path).exists() else []
    if not log:
        return None
    steps = [e["step"] for e in log]
    fig, (losses, dev) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in LOSS_TERMS:
        values = [e[key] for e in log if key in e]
        if values:
            losses.plot(steps[:len(values)], smoothed(values), label=label)
    losses.set_yscale("log")
    losses.set_xlabel("step")
    losses.set_title("loss terms (smoothed)")
    losses.legend()
    for key, label in DEV_SCORES:
        points = [(e["step"], e[key]) for e in log if key in e]
        if points:
            dev.plot(*zip(*points), marker="o", label=label)
    edits = next((e["dev_edits"] for e in reversed(log) if "dev_edits" in e), None)
    dev.set_title(f"dev split, final protocol, T = {edits}" if edits else "dev split: not scored")
    dev.set_xlabel("step")
    dev.set_ylim(0, 1.02)
    if edits:
        dev.legend()
    fig.tight_layout()
    partial = Path(out).with_suffix(".partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    partial.replace(out)
    return Path(out)
