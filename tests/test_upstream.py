"""python -m dafnet_plugin.upstream against a minimal fake EasyEdit layout: no checkout needed."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dafnet_plugin import DAFNetHyperParams, DAFNetTrainingHparams, upstream

from conftest import REPO

# The host's files the export reads or edits, cut down to the lines that matter; hparams.py and
# the trainer stubs are just enough to import the exported package.
FAKE = {
    "easyeditor/__init__.py": "",
    "easyeditor/models/__init__.py": "from .rome import *",  # no final newline, as in the host
    "easyeditor/util/__init__.py": "",
    "easyeditor/util/alg_dict.py": textwrap.dedent("""\
        from ..models.rome import ROMEHyperParams, apply_rome_to_model
        from ..models.mend import MendRewriteExecutor

        ALG_DICT = {
            'ROME': apply_rome_to_model,
            'MEND': MendRewriteExecutor().apply_to_model
        }
        """),
    "easyeditor/util/alg_train_dict.py": textwrap.dedent("""\
        from ..trainer import MEND

        ALG_TRAIN_DICT = {
            'MEND': MEND,
        }
        """),
    "easyeditor/util/hparams.py": textwrap.dedent("""\
        import yaml


        class HyperParams:
            pass


        def load_hparams_config(path):
            return yaml.safe_load(open(path))


        def normalize_alg_name(config, expected, keep_legacy=False, legacy_key="alg"):
            assert config.get("alg_name", config.get(legacy_key)) == expected
            config["alg_name"] = expected
            if not keep_legacy:
                config.pop(legacy_key, None)
            return config
        """),
    "easyeditor/editors/utils.py": 'CALLABLE_RESTORE_ALGS = {"KN", "GRACE"}\n',
    "easyeditor/trainer/__init__.py": "",
    "easyeditor/trainer/algs/__init__.py": "",
    "easyeditor/trainer/algs/editable_model.py": textwrap.dedent("""\
        import torch


        class EditableModel(torch.nn.Module):
            def __init__(self, model, config, model_constructor):
                super().__init__()
                self.model, self.config = model, config
        """),
    "easyeditor/trainer/losses.py": "def masked_log_probs(config, pred, targ, shift=False):\n    pass\n",
}
EXPECTED_DIFF = {
    "easyeditor/models/__init__.py": ["+from .dafnet import *"],
    "easyeditor/util/alg_dict.py": [
        "+from ..models.dafnet import DAFNetHyperParams, apply_dafnet_to_model",
        "-    'MEND': MendRewriteExecutor().apply_to_model",
        "+    'MEND': MendRewriteExecutor().apply_to_model,",
        "+    'DAFNet': apply_dafnet_to_model,"],
    "easyeditor/util/alg_train_dict.py": ["+from ..trainer.algs.dafnet import DAFNetTrainable",
                                          "+    'DAFNET': DAFNetTrainable,"],
    "easyeditor/editors/utils.py": ['-CALLABLE_RESTORE_ALGS = {"KN", "GRACE"}',
                                    '+CALLABLE_RESTORE_ALGS = {"KN", "GRACE", "DAFNet"}'],
}


@pytest.fixture
def fake(tmp_path) -> Path:
    root = tmp_path / "EasyEdit"
    for rel, text in FAKE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "hparams/ROME").mkdir(parents=True)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_writes_the_method_yamls_and_registration_lines(fake):
    report = upstream.export(fake)
    method, entry = "easyeditor/trainer/algs/dafnet", "easyeditor/models/dafnet"
    assert set(report.written) == {
        *(f"{method}/{n}.py" for n in ("__init__", "dafnet_network", "dafnet_editor", "dafnet_hparams", "dafnet_trainable")),
        f"{entry}/__init__.py", f"{entry}/dafnet_main.py",
        *(f"hparams/{d}/{m}.yaml" for d in ("DAFNet", "TRAINING/DAFNet") for m in ("gpt-j-6B", "gpt2-xl", "llama-7b"))}
    assert report.registrations == EXPECTED_DIFF
    for rel in report.written:
        text = (fake / rel).read_text()
        assert upstream.MARK in text.splitlines()[0], rel
        if rel.endswith(".py"):
            compile(text, rel, "exec")
            assert "dafnet_plugin" not in text.split("\n", 1)[1], rel  # only the provenance line names the plugin
    # the method files are the plugin's, imports aside
    network = (fake / method / "dafnet_network.py").read_text()
    assert network.split("\n", 1)[1] == (REPO / "dafnet_plugin/network.py").read_text()
    editor = (fake / method / "dafnet_editor.py").read_text()
    assert "from .dafnet_network import" in editor and "from .network import" not in editor
    assert (fake / "hparams/DAFNet/gpt2-xl.yaml").read_text().endswith((REPO / "hparams/DAFNet/gpt2-xl.yaml").read_text())
    out = "\n".join(report.lines())
    assert "wrote easyeditor/models/dafnet/dafnet_main.py" in out and "+    'DAFNet': apply_dafnet_to_model," in out


def test_exported_hparams_read_every_exported_yaml_with_the_plugins_keys(fake):
    upstream.export(fake)
    script = textwrap.dedent("""\
        import dataclasses, glob, json, sys
        sys.path.insert(0, sys.argv[1])
        from easyeditor.trainer.algs.dafnet import DAFNetHyperParams, DAFNetTrainingHparams
        out = {"edit": [f.name for f in dataclasses.fields(DAFNetHyperParams)],
               "train": [f.name for f in dataclasses.fields(DAFNetTrainingHparams)], "loaded": []}
        for path in sorted(glob.glob(sys.argv[1] + "/hparams/DAFNet/*.yaml")):
            out["loaded"].append(DAFNetHyperParams.from_hparams(path).network_config().n_layers)
        for path in sorted(glob.glob(sys.argv[1] + "/hparams/TRAINING/DAFNet/*.yaml")):
            hp = DAFNetTrainingHparams.from_hparams(path)
            assert hp.alg == hp.alg_name == "DAFNet" and hp.tokenizer_name == hp.model_name, path
            out["loaded"].append(hp.n_layers)
        print(json.dumps(out))
        """)
    run = subprocess.run([sys.executable, "-c", script, str(fake)], capture_output=True, text=True, timeout=120,
                         cwd=fake)  # not the repo: the exported package must not see dafnet_plugin's files
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert set(out["edit"]) == {f.name for f in dataclasses.fields(DAFNetHyperParams)}
    assert set(out["train"]) == {f.name for f in dataclasses.fields(DAFNetTrainingHparams)} | {"alg_name", "cbase"}
    assert len(out["loaded"]) == 6


def test_a_second_export_changes_nothing(fake, capsys):
    upstream.export(fake)
    before = tree(fake)
    assert upstream.main([str(fake)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert tree(fake) == before


def test_refuses_a_folder_that_is_not_an_easyedit_checkout(tmp_path, fake, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(upstream.NotACheckout, match="not an EasyEdit checkout: it has no easyeditor/"):
        upstream.export(empty)
    assert upstream.main([str(empty)]) == 2
    assert "not an EasyEdit checkout" in capsys.readouterr().err
    # the 2023 release: no CALLABLE_RESTORE_ALGS; nothing is written
    (fake / "easyeditor/editors/utils.py").write_text("import torch\n")
    before = tree(fake)
    with pytest.raises(upstream.NotACheckout, match="main branch"):
        upstream.export(fake)
    assert tree(fake) == before


def test_never_overwrites_a_file_it_did_not_write_without_force(fake):
    mine = fake / "hparams/DAFNet/gpt2-xl.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("alg_name: DAFNet  # someone's own\n")
    before = tree(fake)
    with pytest.raises(upstream.WouldOverwrite, match="hparams/DAFNet/gpt2-xl.yaml"):
        upstream.export(fake)
    assert tree(fake) == before  # refused before writing anything
    report = upstream.export(fake, force=True)
    assert "hparams/DAFNet/gpt2-xl.yaml" in report.written and upstream.MARK in mine.read_text()
    # a file it wrote earlier is updated without --force when the plugin changes
    network = fake / "easyeditor/trainer/algs/dafnet/dafnet_network.py"
    network.write_text(network.read_text() + "# stale\n")
    assert upstream.export(fake).written == ["easyeditor/trainer/algs/dafnet/dafnet_network.py"]


def test_dry_run_writes_nothing(fake):
    before = tree(fake)
    report = upstream.export(fake, dry_run=True)
    assert report.written and report.registrations and tree(fake) == before
