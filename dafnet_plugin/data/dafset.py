"""DAFNet's training data (DAFSet parts, CounterFact, MEND ZsRE files) as EasyEdit records: dicts with
REQUIRED's keys, and ground_truth and subject when known. Nothing here imports easyeditor, so the trainer
works without the host; the collate functions build the batches the host's datasets build."""
from __future__ import annotations

import bisect
import itertools
import json
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

Record = dict[str, Any]
REQUIRED = ("prompt", "target_new", "rephrase_prompt", "locality_prompt", "locality_ground_truth")
MEND_REQUIRED = ("src", "alt", "answers", "rephrase", "loc", "loc_ans")
MEND_KEYS = {"src": "prompt", "alt": "target_new", "rephrase": "rephrase_prompt", "loc_ans": "locality_ground_truth",
             "subject": "subject"}
# Fields that hold text, in either form: a number or a list there would fail deep in the host, after the
# edits before it in a sequence had run.
TEXT_FIELDS = (*REQUIRED, "ground_truth", "subject", "src", "alt", "rephrase", "loc", "loc_ans")
PROMPT_FIELDS = ("prompt", "rephrase_prompt", "src", "rephrase")
PREFIX_WORDS = 30  # DAFSet's robust part cuts each distracting prefix to its first 30 words
NQ_PREFIX = "nq question: "


def _check(record: Any, fields: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = next((f for f in fields if f not in record), None)
    if missing:
        raise ValueError(f"{where}: missing {missing!r}")
    # the strings an edit is made of: a null or empty one would fail far from here (MEND's empty alt
    # marks a record the host skips, so it is let through)
    for f in fields:
        if record[f] is None:
            raise ValueError(f"{where}: {f!r} is null")
        if isinstance(record[f], str) and not record[f].strip() and f != "alt":
            raise ValueError(f"{where}: {f!r} is empty")
    for f in TEXT_FIELDS:
        if f in record and not isinstance(record[f], str):
            raise ValueError(f"{where}: {f!r} must be a string, not {type(record[f]).__name__} ({record[f]!r:.40})")
    for f in PROMPT_FIELDS:  # a ROME-style template would be edited literally, braces and all
        if "{}" in record.get(f, ""):
            raise ValueError(f"{where}: {f!r} is a template ({record[f]!r:.60}); give it with the subject filled in")
    for key in ("prefix", "answers"):  # lists that get indexed: an empty one would fail later, far from here
        value = record.get(key, [""])
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{where}: {key!r} must be a non-empty list of strings")


def load_records(path: str | Path) -> list[Record]:
    """Records of a CounterFact (EasyEdit form), MEND ZsRE or DAFSet JSON file, in EasyEdit's form.
    The form is told from the first record's keys; a robust part's records keep their `prefix` list."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not readable as JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                         f"is the file complete?") from None
    if not isinstance(raw, list):
        raise ValueError(f"{path.name}: expected a JSON list of records")
    mend = bool(raw) and isinstance(raw[0], dict) and "src" in raw[0]
    records = []
    for i, r in enumerate(raw):
        _check(r, MEND_REQUIRED if mend else REQUIRED, f"{path.name} record {i}")
        if not mend:
            records.append(dict(r))
        elif r["alt"] != "":  # the host's ZsreDataset skips these: there is nothing to edit towards
            records.append({new: r[old] for old, new in MEND_KEYS.items() if old in r}
                           | {"ground_truth": r["answers"][0], "locality_prompt": r["loc"].removeprefix(NQ_PREFIX)})
    return records


def cond(record: Record) -> str:
    """The host's conditioning string; records without a known original answer use ""."""
    return "{} >> {} || {}".format(record.get("ground_truth", ""), record["target_new"], record["prompt"])


def _device(device: Any) -> torch.device:
    # hparams name a CUDA index even on CPU-only machines, where the project runs everything on the CPU
    name = f"cuda:{device}" if isinstance(device, int) else str(device)
    return torch.device(name if torch.cuda.is_available() or not name.startswith("cuda") else "cpu")


class DAFSetDataset(Dataset):
    """One DAFSet part (or any file load_records reads). A robust record i gets one of its prefixes, chosen
    from (robust_prefix_seed, i) and cut to 30 words, in front of its rephrase and locality prompts, not its
    edit prompt. Given a config naming a tokenizer, collates as the host's CounterFactDataset does."""

    def __init__(self, path: str | Path, size: int | None = None, config: Any = None,
                 robust_prefix_seed: int = 0) -> None:
        self.path = Path(path)
        self.data = load_records(self.path)[:size]
        self.robust_prefix_seed = robust_prefix_seed
        self.config = config
        self.max_length = getattr(config, "max_length", 40)
        if getattr(config, "tokenizer_class", None):
            self.tok = _host_tokenizer(config)
            for i, r in enumerate(self.data):
                if not self.tok(" " + r["target_new"], add_special_tokens=False)["input_ids"]:
                    raise ValueError(f"{self.path.name} record {i}: target_new {r['target_new']!r} "
                                     f"is no token at all for this tokenizer")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Record:
        rec = dict(self.data[i])
        prefixes = rec.pop("prefix", None)
        if prefixes:
            # a string seed hashes the same in every process, so item i always gets the same prefix
            chosen = random.Random(f"{self.robust_prefix_seed}:{i}").choice(prefixes)
            prefix = " ".join(chosen.split()[:PREFIX_WORDS])
            for key in ("rephrase_prompt", "locality_prompt"):
                rec[key] = f"{prefix} {rec[key]}"
        return rec

    def collate_fn(self, batch: list[Record], gpt: bool = False) -> dict[str, Any]:
        def tok(texts: list[str]) -> dict[str, torch.Tensor]:
            enc = self.tok(texts, return_tensors="pt", padding=True, max_length=self.max_length, truncation=True)
            return {k: v.to(_device(self.config.device)) for k, v in enc.items()}

        def labels(ids: torch.Tensor) -> torch.Tensor:
            return ids.masked_fill(ids == self.tok.pad_token_id, -100)

        trg = [b["target_new"] for b in batch]
        src, reph, loc = ([b[k] for b in batch] for k in ("prompt", "rephrase_prompt", "locality_prompt"))
        loc_ans = [b["locality_ground_truth"] for b in batch]
        if gpt:  # decoder-only models read the answer after the prompt, as the host does
            src, reph = [f"{p} {t}" for p, t in zip(src, trg)], [f"{p} {t}" for p, t in zip(reph, trg)]
            loc = [f"{p} {a}" for p, a in zip(loc, loc_ans)]
        edit_labels = labels(tok(trg)["input_ids"])
        loc_enc, ans_enc = tok(loc), tok(loc_ans)
        return {
            "edit_inner": {**tok(src), "labels": edit_labels},
            "edit_rephrase": {**tok(reph), "labels": edit_labels},
            "loc": {**loc_enc, "decoder_attention_mask": ans_enc["attention_mask"],
                    "labels": labels(ans_enc["input_ids"])},
            "cond": tok([cond(b) for b in batch]),
            "raw": batch,
        }

    def collate_gpt_fn(self, batch: list[Record]) -> dict[str, Any]:
        return self.collate_fn(batch, gpt=True)


def _host_tokenizer(config: Any) -> Any:
    """As the host's CounterFactDataset builds it: decoder-only tokenizers pad with eos, on the left."""
    import transformers

    name = getattr(config, "tokenizer_name", None) or getattr(config, "model_name", None) or config.model.name
    tok = getattr(transformers, config.tokenizer_class).from_pretrained(name)
    # The host tells decoder-only tokenizers by their GPT-2/LLaMA class, but transformers 5's AutoTokenizer
    # returns a generic class for them (SmolLM2's TokenizersBackend): a causal-LM model_class says it too.
    causal = "causallm" in str(getattr(config, "model_class", "")).lower()
    if causal or isinstance(tok, (transformers.GPT2Tokenizer, transformers.LlamaTokenizer)) or tok.pad_token_id is None:
        tok.pad_token_id, tok.padding_side = tok.eos_token_id, "left"
    return tok


class MixtureDataset(Dataset):
    """Several record datasets end to end, for the host's trainer; `sample_sequence` draws a whole
    edit sequence from one source, as DAFNet trains on sequences of one kind of edit."""

    def __init__(self, sources: dict[str, Sequence[Record]]) -> None:
        for name, src in sources.items():
            if isinstance(src, list):  # plain records get the check the file loaders give
                for i, r in enumerate(src):
                    _check(r, REQUIRED, f"source {name!r} record {i}")
        self.sources = dict(sources)
        self._names = list(self.sources)
        self._sizes = [len(s) for s in self.sources.values()]
        self._ends = list(itertools.accumulate(self._sizes))
        if not sum(self._sizes):
            raise ValueError("MixtureDataset: the sources hold no records")

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = bisect.bisect_right(self._ends, i)
        return self.sources[self._names[j]][i - (self._ends[j] - self._sizes[j])]

    def sample_sequence(self, rng: random.Random, k: int) -> tuple[str, list[Record]]:
        """A source, drawn with probability proportional to its size, and k distinct records of it."""
        name = rng.choices(self._names, weights=self._sizes)[0]
        source = self.sources[name]
        return name, [dict(source[i]) for i in rng.sample(range(len(source)), min(k, len(source)))]

    def collate_fn(self, batch: list[Record]) -> dict[str, Any]:
        return self._delegate("collate_fn", batch)

    def collate_gpt_fn(self, batch: list[Record]) -> dict[str, Any]:
        return self._delegate("collate_gpt_fn", batch)

    def _delegate(self, name: str, batch: list[Record]) -> dict[str, Any]:
        # a source built without a tokenizer has the methods but cannot run them
        source = next((s for s in self.sources.values() if hasattr(s, name) and hasattr(s, "tok")), None)
        if source is None:
            raise AttributeError(f"no source of this MixtureDataset has {name} and a tokenizer")
        # the host's collates read ground_truth (CounterFact) or cond (ZsRE): give every record both, so
        # that one source's collate takes any source's records
        return getattr(source, name)([{"ground_truth": "", **r, "cond": r.get("cond", cond(r))} for r in batch])
