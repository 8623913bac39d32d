"""What every method's preparation gets: the model, the training data, a cache keyed by content."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class Context:
    model_path: str                  # a local folder (resolved) or a hub name
    hparams_name: str                # <name>.yaml under hparams/<ALG>/ and hparams/TRAINING/<ALG>/
    train_files: list[str]           # EasyEdit-form JSON records for trained methods and statistics
    cache_root: Path
    device: str = "cpu"
    steps: dict[str, int] = field(default_factory=dict)  # training steps per method, None: the YAML's
    training: dict[str, dict] = field(default_factory=dict)  # per trained method, its training settings

    def fingerprint(self, *parts) -> str:
        """A hash of the model, the training files (name and content) and ``parts``: a second run
        with the same inputs finds the same folder. Content, not modification time: a data folder
        copied or checked out again (same records, new times) must not send hours of training to waste."""
        files = [(Path(p).name, file_digest(p)) for p in self.train_files]
        blob = json.dumps([self.model_path, files, [str(p) for p in parts]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def cache_dir(self, method: str, *parts) -> Path:
        path = self.cache_root / method / self.fingerprint(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
