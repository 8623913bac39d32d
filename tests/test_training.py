"""Meta-training: it learns, it checkpoints and resumes exactly, it stops on NaN, and it runs
through the host's own EditTrainer."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from dafnet_plugin import DAFNetHyperParams, attach, tokenize_edits
from dafnet_plugin.data.builtin import make_edits, to_counterfact
from dafnet_plugin.editor import per_edit_nll
from dafnet_plugin.hparams import DAFNetTrainingHparams
from dafnet_plugin.training import Curriculum, DAFNetTrainer, TrainingDiverged, locality_kl

from conftest import REPO

TRAIN = to_counterfact(make_edits(split="train"))
HELD_OUT = to_counterfact(make_edits(24, split="val"))


def training_hparams(model_dir, tmp_path, **overrides) -> DAFNetTrainingHparams:
    hp = DAFNetTrainingHparams.from_hparams(str(REPO / "hparams/TRAINING/DAFNet/tiny-gpt2.yaml"))
    hp.model_name = hp.tokenizer_name = str(model_dir)
    hp.results_dir = str(tmp_path / "results")
    for key, value in overrides.items():
        setattr(hp, key, value)
    return hp


def trainer_for(model_dir, tmp_path, **overrides) -> DAFNetTrainer:
    hp = training_hparams(model_dir, tmp_path, **overrides)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = GPT2Tokenizer.from_pretrained(model_dir)
    return DAFNetTrainer(attach(model, hp, seed=hp.seed), tok, hp, lambda rng, k: rng.sample(TRAIN, k), tmp_path / "ck.pt")


def held_out_effect(editor, tok) -> tuple[float, float]:
    """Mean drop of the target NLL after a single edit, and mean locality KL, on held-out edits."""
    editor.eval()
    drops, kls = [], []
    with torch.no_grad():
        for r in HELD_OUT:
            edit = tokenize_edits(tok, [r["prompt"]], [r["target_new"]])
            loc = tokenize_edits(tok, [r["locality_prompt"]], [r["locality_ground_truth"]])
            pre = per_edit_nll(editor.model(edit.input_ids).logits, edit.labels)
            base = editor.model(loc.input_ids).logits
            editor.reset()
            editor.edit(edit)
            drops.append((pre - per_edit_nll(editor.model(edit.input_ids).logits, edit.labels)).item())
            kls.append(locality_kl(base, editor.model(loc.input_ids).logits, loc.labels).item())
            editor.reset()
    return sum(drops) / len(drops), sum(kls) / len(kls)


def test_training_makes_held_out_edits_take_and_keeps_locality(tiny_gpt2_dir, tmp_path):
    trainer = trainer_for(tiny_gpt2_dir, tmp_path)
    before, _ = held_out_effect(trainer.editor, trainer.tok)
    history = trainer.run()
    after, kl = held_out_effect(trainer.editor, trainer.tok)
    assert len(history) == 40 and all(math.isfinite(h["loss"]) for h in history)
    assert after > 1.0 and after > before + 1.0, (before, after)  # target NLL falls by > 1 nat
    assert kl < 0.5 * after


def test_checkpoint_loads_into_base_editor_hparams_and_gives_identical_edits(tiny_gpt2_dir, tmp_path):
    trainer = trainer_for(tiny_gpt2_dir, tmp_path, max_iters=6, model_save_pt=3)
    trainer.run()
    state = torch.load(tmp_path / "ck.pt", weights_only=True)  # nothing pickled
    assert set(state) == {"model", "opt", "lr_opt", "curriculum", "step", "settings"}
    assert state["settings"]["lr"] == trainer.hp.lr and state["settings"]["inner_params"] == trainer.hp.inner_params
    assert not any(k.startswith("transformer.") for k in state["model"])  # no base-model weights
    hp = DAFNetHyperParams.from_hparams(str(REPO / "hparams/DAFNet/tiny-gpt2.yaml"))
    hp.model_name, hp.archive = str(tiny_gpt2_dir), str(tmp_path / "ck.pt")
    loaded = attach(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), hp)
    edit = tokenize_edits(trainer.tok, [HELD_OUT[0]["prompt"]], [HELD_OUT[0]["target_new"]])
    trainer.editor.eval()
    with torch.no_grad():
        trainer.editor.edit(edit)
        loaded.edit(edit)
    for name in loaded.module_names:
        assert torch.equal(trainer.editor.deltas[name], loaded.deltas[name])


def test_resume_continues_exactly_where_it_stopped(tiny_gpt2_dir, tmp_path):
    straight = trainer_for(tiny_gpt2_dir, tmp_path / "a", max_iters=8, model_save_pt=4)
    straight.run()
    first = trainer_for(tiny_gpt2_dir, tmp_path / "b", max_iters=8, model_save_pt=4)
    first.run(max_iters=4)
    resumed = trainer_for(tiny_gpt2_dir, tmp_path / "b", max_iters=8, model_save_pt=4)
    assert resumed.step == 4
    assert torch.equal(resumed.opt.state_dict()["state"][0]["exp_avg"], first.opt.state_dict()["state"][0]["exp_avg"])
    resumed.run()
    assert resumed.step == 8
    # the budget of a resumed training adds what the first run spent on the steps it checkpointed
    from benchmarks.methods.dafnet import kept_steps
    kept, earlier = kept_steps(resumed.log_path.read_text().splitlines())
    assert sorted(kept) == list(range(1, 9)) and {kept[s]["run"] for s in range(5, 9)} == {1}
    assert earlier == pytest.approx(sum(kept[s]["step_s"] for s in range(1, 5))) and earlier > 0
    for (name, a), b in zip(straight.editor.state_dict().items(), resumed.editor.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def settings_warnings(capsys) -> list[str]:
    """The lines of stderr so far that name changed training settings (loading bars are on stderr too)."""
    return [line for line in capsys.readouterr().err.splitlines() if "changed training settings" in line]


def test_a_resume_with_changed_settings_names_them_once_and_goes_on_with_the_new_ones(tiny_gpt2_dir, tmp_path, capsys):
    trainer_for(tiny_gpt2_dir, tmp_path, max_iters=4, model_save_pt=4).run()
    same = trainer_for(tiny_gpt2_dir, tmp_path, max_iters=8)
    assert same.step == 4 and settings_warnings(capsys) == []  # nothing changed: nothing said
    resumed = trainer_for(tiny_gpt2_dir, tmp_path, max_iters=8, lr=2e-3, max_sequence=6, cloc=0.5)
    warnings = settings_warnings(capsys)
    assert len(warnings) == 1 and "at step 4" in warnings[0] and "goes on with the new ones" in warnings[0]
    for change in ("lr 0.001 -> 0.002", "max_sequence 4 -> 6", "cloc 0.2 -> 0.5"):
        assert change in warnings[0]
    assert "lr_lr" not in warnings[0]
    assert resumed.opt.param_groups[0]["lr"] == 2e-3 and resumed.lr_opt.param_groups[0]["lr"] == 1e-3
    assert resumed.curriculum.cap == 6
    resumed.run()
    assert settings_warnings(capsys) == []  # said once, at the resume
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["settings"]["lr"] == 2e-3


def test_a_checkpoint_without_recorded_settings_resumes_silently_with_its_own(tiny_gpt2_dir, tmp_path, capsys):
    trainer_for(tiny_gpt2_dir, tmp_path, max_iters=4, model_save_pt=4).run()
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    del state["settings"]  # as written before checkpoints recorded them
    torch.save(state, tmp_path / "ck.pt")
    resumed = trainer_for(tiny_gpt2_dir, tmp_path, max_iters=8, lr=2e-3, max_sequence=6)
    assert resumed.step == 4 and settings_warnings(capsys) == []
    assert resumed.opt.param_groups[0]["lr"] == 1e-3 and resumed.curriculum.cap == 4


def test_a_checkpoint_whose_networks_do_not_fit_names_the_changed_setting(tiny_gpt2_dir, tmp_path):
    trainer_for(tiny_gpt2_dir, tmp_path, max_iters=2, model_save_pt=2).run()
    with pytest.raises(ValueError, match=r"ck\.pt: the checkpoint's networks do not fit this run's "
                                         r"\(fusion 'additive' -> 'convex'\)"):
        trainer_for(tiny_gpt2_dir, tmp_path, fusion="convex")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_gpt2_dir, tmp_path):
    trainer = trainer_for(tiny_gpt2_dir, tmp_path, max_iters=2, model_save_pt=2)
    trainer.run()
    good = (tmp_path / "ck.pt").read_bytes()
    with torch.no_grad():
        next(iter(trainer.editor.networks.values())).layers[0].ffn[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 3.*ck\.pt"):
        trainer.run(max_iters=4)
    assert (tmp_path / "ck.pt").read_bytes() == good


def test_curriculum_grows_when_the_loss_stalls_and_stops_at_its_cap():
    c = Curriculum(cap=25, patience=5)
    for step in range(1, 60):
        c.update(1.0, step)
    assert c.k_max == 25  # 1 -> 11 -> 21 -> 25
    c = Curriculum(cap=25, patience=5)
    for step in range(1, 60):
        c.update(1.0 / step, step)  # always improving: no growth
    assert c.k_max == 1
    c = Curriculum(cap=25, patience=5, max_wait=20)
    for step in range(1, 60):
        c.update(1.0 / step, step)  # still improving, but k_max is overdue at steps 20 and 40
    assert c.k_max == 21


def test_training_through_the_hosts_edit_trainer(tiny_gpt2_dir, tmp_path):
    ee = pytest.importorskip("easyeditor", reason="EasyEdit is not installed")
    data = tmp_path / "train.json"
    data.write_text(json.dumps(TRAIN[:60]))
    hp = training_hparams(tiny_gpt2_dir, tmp_path, max_iters=5, model_save_pt=5, tokenizer_class="GPT2Tokenizer")
    trainer = ee.EditTrainer(config=hp, train_set=ee.CounterFactDataset(str(data), config=hp),
                             val_set=ee.CounterFactDataset(str(data), size=5, config=hp))
    history = trainer.run()
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]
    archive = tmp_path / "results/models/DAFNet/tiny-gpt2.pt"
    assert torch.load(archive, weights_only=True)["step"] == 5


def test_training_log_scores_the_dev_records_and_plots_itself(tiny_gpt2_dir, tmp_path):
    """Every dev_every steps the log holds the final-protocol rewrite and locality of the dev records,
    the same figures as editing them one by one and scoring afterwards; a plot sits beside the checkpoint."""
    from conftest import final_accuracy
    from dafnet_plugin.training import dev_scores

    trainer = trainer_for(tiny_gpt2_dir, tmp_path, dev_every=2, dev_edits=6, model_save_pt=2)
    trainer.dev_records = HELD_OUT[:6]
    trainer.run(4)
    log = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    assert [e["step"] for e in log if "dev/rewrite" in e] == [2, 4]
    assert all(0 <= e["dev/rewrite"] <= 1 and 0 <= e["dev/locality"] <= 1 for e in log if "dev/rewrite" in e)
    assert trainer.checkpoint.with_suffix(".training.png").stat().st_size > 10_000
    scores = dev_scores(trainer.editor.eval(), trainer.tok, HELD_OUT[:6], 40)
    assert scores["rewrite"] == pytest.approx(final_accuracy(trainer.editor, trainer.tok, HELD_OUT[:6]), abs=1e-6)
    assert log[-1]["dev/rewrite"] == pytest.approx(scores["rewrite"], abs=1e-4)
    assert trainer.editor.n_edits == 0  # scoring leaves no edit behind
