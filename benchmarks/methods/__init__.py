"""How each method is prepared for the suite: ``PREPARE[name](ctx) -> the host's hparams``."""
from __future__ import annotations

from typing import Callable

from .context import Context


def _dafnet(ctx: Context):
    from .dafnet import prepare
    return prepare(ctx)


PREPARE: dict[str, Callable[[Context], object]] = {"DAFNet": _dafnet}
