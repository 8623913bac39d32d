"""A bad comparison-suite configuration stops the run before any model is loaded, in one line that
names the key and what it expects. The model named here does not exist: a check that came after the
model was loaded would fail on it instead, and the message asserted would not match."""
from __future__ import annotations

import json
import re

import pytest

from dafnet_plugin.data.builtin import make_edits, to_counterfact

pytest.importorskip("easyeditor", reason="EasyEdit is not installed")

from benchmarks import compare  # noqa: E402


@pytest.fixture
def overrides(tmp_path) -> list[str]:
    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(to_counterfact(make_edits(20, split="train"))))
    val.write_text(json.dumps(to_counterfact(make_edits(12, split="val"))))
    return [f"model={tmp_path / 'no-such-model'}", "hparams_name=tiny-gpt2", f"train=[{train}]", f"eval={val}",
            "methods=[DAFNet]", "T=[4]", "n_single=3", "threads=1", f"out={tmp_path / 'run'}",
            f"cache={tmp_path / 'cache'}"]


def stops(overrides: list[str], *more: str) -> str:
    """The one-line message the suite stops with, given these settings on its command line."""
    with pytest.raises(SystemExit) as stopped:
        compare.run(compare.load_config(None, None, overrides + list(more)))
    message = str(stopped.value.code)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("setting,expected", [
    ("methods=[DAFNet,Rome]", r"methods: no method 'Rome'; known: DAFNet, MEND, SERAC, ROME, MEMIT"),
    ("steps.Dafnet=5", r"steps\.Dafnet: no method 'Dafnet'; known: DAFNet, MEND, SERAC, ROME, MEMIT"),
    ("max_T.Rome=10", r"max_T\.Rome: no method 'Rome'"),
    ("hparams.dafnet.archive=x.pt", r"hparams\.dafnet: no method 'dafnet'"),
    ("training.mend.lr=1e-4", r"training\.mend: no method 'mend'"),
    ("steps.ROME=5", r"steps\.ROME: ROME does not train; steps are for DAFNet, MEND, SERAC"),
    ("T=[0]", r"each T must be at least 1, not 0"),
    ("T=[-1,10]", r"each T must be at least 1, not -1"),
    ("T=[4,4]", r"T lists 4 more than once"),
    ("n_single=-5", r"n_single must be at least 1, not -5"),
    ("n_single=0", r"n_single must be at least 1, not 0"),
    ("threads=0", r"threads must be at least 1, not 0"),
    ("sequences=0", r"sequences must be at least 1, not 0"),
    ("max_T.DAFNet=0", r"max_T\.DAFNet must be at least 1, not 0"),
    ("dtype=float8", r"dtype must be one of float32, float16, bfloat16, not 'float8'"),
    ("eval=/no/such/val.json", r"no data file at /no/such/val\.json"),
    ("hparams.DAFNet.archve=x.pt", r"hparams\.DAFNet\.archve: DAFNetHyperParams has no field 'archve'"),
    ("hparams.DAFNet.archive=/no/such/archive.pt", r"hparams\.DAFNet\.archive: no archive at /no/such/archive\.pt"),
])
def test_a_bad_setting_stops_the_run_naming_its_key(overrides, setting, expected):
    assert re.search(expected, stops(overrides, setting))


@pytest.mark.parametrize("setting,expected", [
    ("training.MEND.learning_rate=1e-4", "training.MEND.learning_rate: not a training setting of MEND"),
    ("training.SERAC.layers=last2", "training.SERAC.layers: not a training setting of SERAC"),
    ("training.DAFNet.lr=1e-4", "training.DAFNet: only MEND, SERAC take training settings here"),
])
def test_a_training_setting_no_method_reads_is_named(overrides, setting, expected):
    assert expected in stops(overrides, setting)


def test_the_presets_training_settings_pass(overrides):
    from benchmarks.config_checks import check_config
    from benchmarks.presets import PRESETS

    for name in ("smollm2-cf", "smollm2-zsre"):
        cfg = compare.load_config(name, None, overrides)
        cfg.training = PRESETS[name]["training"] | {"MEND": {**PRESETS[name]["training"]["MEND"], "layers": "last2",
                                                             "edit_loss_on": "rephrase", "lr_scale": 1.5}}
        check_config(cfg)


def test_a_host_method_override_is_checked_against_the_host_hparams(overrides):
    message = stops(overrides, "hparams.ROME.v_num_grad_step=3")
    assert "hparams.ROME.v_num_grad_step: ROMEHyperParams has no field 'v_num_grad_step'" in message


@pytest.mark.parametrize("settings,needs", [(["T=[4,20]"], "T=20 x sequences=1 needs 20"),
                                            (["T=[4]", "sequences=4"], "T=4 x sequences=4 needs 16"),
                                            (["n_single=13"], "n_single needs 13")])
def test_an_evaluation_file_shorter_than_the_run_is_named(overrides, settings, needs):
    message = stops(overrides, *settings)
    assert "val.json holds 12 records; " + needs in message


@pytest.mark.parametrize("setting,expected", [
    ("methods=DAFNet", "key 'methods': a list is written in brackets, e.g. methods=[DAFNet]"),
    ("T=10", "key 'T': a list is written in brackets, e.g. T=[10]"),
    ("T=[ten]", "key 'T[0]': Value 'ten' of type 'str' could not be converted to Integer"),
    ("n_singel=3", "key 'n_singel': Key 'n_singel' not in 'CompareConfig'"),
])
def test_a_malformed_command_line_is_one_line_naming_the_key(setting, expected):
    with pytest.raises(SystemExit) as stopped:
        compare.load_config(None, None, [setting])
    assert str(stopped.value.code) == f"the command line: {expected}"


def test_a_config_file_that_is_not_yaml_is_named(tmp_path):
    bad = tmp_path / "my.yaml"
    bad.write_text("methods: [DAFNet\n")
    with pytest.raises(SystemExit, match=r"my\.yaml: not readable as YAML"):
        compare.load_config(None, str(bad), [])
    with pytest.raises(SystemExit, match=r"missing\.yaml: no such file"):
        compare.load_config(None, str(tmp_path / "missing.yaml"), [])


def test_a_good_configuration_passes_the_checks_and_reaches_the_model(overrides):
    """The same settings, none bad: the run gets past every check to the (missing) model."""
    with pytest.raises(Exception) as stopped:
        compare.run(compare.load_config(None, None, overrides))
    assert "no-such-model" in str(stopped.value) and "configuration:" not in str(stopped.value)


@pytest.mark.parametrize("change,found", [({"subject": ""}, "it has no subject for"),
                                          ({"subject": "Atlantis"}, "its subject 'Atlantis' is not in")])
def test_a_record_without_its_subject_in_the_prompt_stops_rome_and_memit(overrides, tmp_path, change, found):
    records = json.loads((tmp_path / "val.json").read_text())
    records[2].update(change)
    (tmp_path / "val.json").write_text(json.dumps(records))
    message = stops(overrides, "methods=[DAFNet,ROME,MEMIT]")
    assert f"val.json record 2: ROME and MEMIT edit at the subject, but {found} the prompt" in message
    with pytest.raises(Exception) as stopped:  # DAFNet alone does not read the subject: on to the model
        compare.run(compare.load_config(None, None, overrides))
    assert "no-such-model" in str(stopped.value)
