"""What every method's preparation gets: the model, the training data, a cache keyed by content."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


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
        """A hash of the model, the training files (name, size, mtime) and ``parts``: a second run
        with the same inputs finds the same folder."""
        files = [(Path(p).name, os.path.getsize(p), int(os.path.getmtime(p))) for p in self.train_files]
        blob = json.dumps([self.model_path, files, [str(p) for p in parts]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def cache_dir(self, method: str, *parts) -> Path:
        path = self.cache_root / method / self.fingerprint(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
