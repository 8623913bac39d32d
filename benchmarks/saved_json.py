"""JSON files that later runs read back (results, training budgets, chosen settings): written so that
a run cut short mid-write leaves the previous version whole, and read so that a damaged file is set
aside with a warning instead of stopping every later run."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``: a kill or a full
    disk during the write leaves the old file as it was (a rename within one folder is atomic)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike) -> Any:
    """What ``path`` holds, or None when there is no such file. A file that is not JSON (cut short by a
    crash before writes were atomic, or edited by hand) is renamed to ``<name>.damaged-<time>`` and named
    on stderr, and None returned: the run starts that file afresh, and what the damaged one held stays."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, kept)
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        print(f"warning: {path} is damaged ({reason}); set aside as {kept.name}, starting it afresh",
              file=sys.stderr)
        return None
