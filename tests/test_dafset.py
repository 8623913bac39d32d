"""DAFSet loading, the robust prefixes, mixtures of sources, and the host's batches built on them."""
from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from dafnet_plugin.data.dafset import REQUIRED, DAFSetDataset, MixtureDataset, load_records

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMOL = Path.home() / ".cache" / "dafnet-easyedit" / "models" / "SmolLM2-135M-Instruct"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
LONG = " ".join(f"w{i}" for i in range(45))  # a prefix longer than the 30 words kept


def record(i: int, **extra) -> dict:
    return {"prompt": f"P{i} is", "target_new": f"T{i}", "rephrase_prompt": f"R{i} is",
            "locality_prompt": f"L{i} is", "locality_ground_truth": f"A{i}", **extra}


def write(tmp_path: Path, name: str, records: list) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_robust_prefix_goes_before_rephrase_and_locality_only(tmp_path):
    prefixes = [LONG, "Short one.", "Another distracting text"]
    path = write(tmp_path, "robust.json", [record(i, prefix=prefixes) for i in range(20)])
    ds = DAFSetDataset(path, robust_prefix_seed=3)
    cut = {" ".join(p.split()[:30]) for p in prefixes}
    for i in range(len(ds)):
        r = ds[i]
        assert r["prompt"] == f"P{i} is" and "prefix" not in r
        head = r["rephrase_prompt"].removesuffix(f" R{i} is")
        assert head in cut and r["locality_prompt"] == f"{head} L{i} is"
        assert len(head.split()) <= 30
    assert any(ds[i]["rephrase_prompt"].startswith("w0 ") for i in range(len(ds)))
    # the same seed gives the same prefixes in a fresh dataset; another seed changes some
    assert [ds[i] for i in range(20)] == [DAFSetDataset(path, robust_prefix_seed=3)[i] for i in range(20)]
    assert [ds[i] for i in range(20)] != [DAFSetDataset(path, robust_prefix_seed=4)[i] for i in range(20)]


def test_missing_field_names_file_index_and_field(tmp_path):
    bad = [record(i) for i in range(20)]
    del bad[17]["rephrase_prompt"]
    with pytest.raises(ValueError, match=r"dafset-cf-train\.json record 17: missing 'rephrase_prompt'"):
        DAFSetDataset(write(tmp_path, "dafset-cf-train.json", bad))
    mend = [{"src": "q?", "alt": "x", "answers": ["y"], "rephrase": "q2?", "loc": "nq question: z"}]
    with pytest.raises(ValueError, match=r"z\.json record 0: missing 'loc_ans'"):
        load_records(write(tmp_path, "z.json", mend))
    with pytest.raises(ValueError, match=r"r\.json record 0: 'prefix' must be"):
        load_records(write(tmp_path, "r.json", [record(0, prefix=[])]))


def test_mend_form_is_converted_and_empty_alt_skipped(tmp_path):
    mend = [{"subject": "S", "src": "q?", "alt": "new", "answers": ["old", "o2"], "rephrase": "q2?",
             "loc": "nq question: who", "loc_ans": "me"},
            {"subject": "S", "src": "q?", "alt": "", "answers": ["old"], "rephrase": "q2?",
             "loc": "nq question: who", "loc_ans": "me"}]
    assert load_records(write(tmp_path, "z.json", mend)) == [
        {"prompt": "q?", "target_new": "new", "ground_truth": "old", "rephrase_prompt": "q2?",
         "locality_prompt": "who", "locality_ground_truth": "me", "subject": "S"}]


def test_mixture_draws_a_whole_sequence_from_one_source(tmp_path):
    big = DAFSetDataset(write(tmp_path, "big.json", [record(i, subject="big") for i in range(30)]))
    small = [record(100 + i, subject="small") for i in range(3)]
    mix = MixtureDataset({"big": big, "small": small})
    assert len(mix) == 33 and mix[29]["prompt"] == "P29 is" and mix[30]["prompt"] == "P100 is"
    rng, seen = random.Random(0), {"big": 0, "small": 0}
    for _ in range(200):
        name, seq = mix.sample_sequence(rng, 5)
        seen[name] += 1
        assert {r["subject"] for r in seq} == {name}
        assert len(seq) == (5 if name == "big" else 3) and len({r["prompt"] for r in seq}) == len(seq)
    assert seen["big"] > 3 * seen["small"] > 0  # drawn in proportion to size, 30 : 3
    assert mix.sample_sequence(random.Random(1), 4) == mix.sample_sequence(random.Random(1), 4)


@needs_data
def test_real_files_load_with_expected_counts():
    counts = {"counterfact-train.json": 10000, "dafset-cf-train.json": 10000}
    for name, n in counts.items():
        assert len(load_records(DATA / name)) == n
    zsre = load_records(DATA / "zsre-train-1k.json")
    assert len(zsre) == 998  # the 1k sample holds two records with an empty alt, skipped as the host does
    assert not any(r["locality_prompt"].startswith("nq question:") for r in zsre)
    for name in [*counts, "zsre-train-1k.json"]:
        assert all(set(REQUIRED) <= r.keys() for r in load_records(DATA / name)), name


needs_smol = pytest.mark.skipif(not (SMOL / "tokenizer_config.json").is_file(), reason=f"no cached tokenizer at {SMOL}")


@needs_smol
def test_causal_lm_tokenizer_pads_left_even_as_a_generic_class(tmp_path):
    # transformers 5's AutoTokenizer gives SmolLM2 a generic class, which the host's GPT-2/LLaMA check misses
    config = SimpleNamespace(tokenizer_class="AutoTokenizer", tokenizer_name=str(SMOL),
                             model_class="AutoModelForCausalLM", device="cpu")
    ds = DAFSetDataset(write(tmp_path, "d.json", [record(0), record(1, target_new="a much longer new target")]),
                       config=config)
    assert ds.tok.padding_side == "left" and ds.tok.pad_token_id == ds.tok.eos_token_id
    ids = ds.collate_gpt_fn([ds[0], ds[1]])["edit_inner"]["input_ids"]
    assert ids[0, 0] == ds.tok.pad_token_id and ids[0, -1] != ds.tok.pad_token_id


@needs_data
@needs_smol
def test_host_counterfact_and_mixture_batches():
    import dafnet_plugin

    if dafnet_plugin.easyeditor is None:
        pytest.skip("EasyEdit is not installed")
    from easyeditor.dataset.counterfact import CounterFactDataset

    config = SimpleNamespace(tokenizer_class="GPT2Tokenizer", tokenizer_name=str(SMOL), device="cpu", max_length=40)
    cf = CounterFactDataset(str(DATA / "counterfact-train.json"), size=5, config=config)
    ds = DAFSetDataset(DATA / "dafset-cf-train.json", size=5, config=config)
    mix = MixtureDataset({"cf": cf, "dafset": ds})
    host = cf.collate_gpt_fn([cf[i] for i in range(3)])
    ours = ds.collate_gpt_fn([ds[i] for i in range(3)])
    mixed = mix.collate_gpt_fn([mix[0], mix[7]])  # one CounterFact and one DAFSet record, through the host
    for batch in (ours, mixed):
        assert batch.keys() == host.keys() == {"edit_inner", "edit_rephrase", "loc", "cond", "raw"}
        for key in ("edit_inner", "edit_rephrase", "loc", "cond"):
            assert batch[key].keys() == host[key].keys(), key
    # dafset-cf-train holds CounterFact's first cases without their ground truth: only cond differs
    for key in ("edit_inner", "edit_rephrase", "loc"):
        for k, v in host[key].items():
            assert v.equal(ours[key][k]), (key, k)
    assert mixed["edit_inner"]["input_ids"].shape[0] == 2
