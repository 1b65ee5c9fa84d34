"""Bad input is one line naming the fix (exit 2); anything else is a bug and keeps its traceback
(issue 20 items 7-9, 11-13; issue 22 item 8). Each test failed before its fix. In-process through
``e2mc.__main__.main`` where the defect was on the command line; fake data only."""
from __future__ import annotations

import errno
import io
import json
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

import e2mc
from e2mc import checkpoints, meter, notebook_io, provenance, reproduce
from e2mc.__main__ import main
from e2mc.config import ConfigError, load_config
from e2mc.errors import UserError
from e2mc.meter import MetricsLog
from e2mc.train import train

sys.path.insert(0, str(Path(__file__).parent))
from fake_data import write_fake_fashion_mnist  # noqa: E402

ROOT = Path(e2mc.__file__).resolve().parent.parent
PRETRAIN = ROOT / "configs/mini/pretrain/vicreg.yaml"
CONTINUE = ROOT / "configs/mini/vicreg.yaml"


def one_line_error(capsys, argv) -> str:
    """Run the command line; it must exit 2 with one line on stderr (argparse's own usage errors aside)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage line plus error line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


# --- one exception type for user errors (issue 22 item 8) ----------------------------------------

def test_a_bug_keeps_its_traceback_while_bad_input_is_one_line(capsys, monkeypatch, tmp_path):
    from e2mc.evaluation import cli

    def bug(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(cli, "evaluate_checkpoint", bug)
    argv = ["evaluate", "--checkpoint", tmp_path / "x.pt", "--results-dir", tmp_path / "out"]
    with pytest.raises(ValueError, match="an internal invariant broke"):
        main([str(a) for a in argv])

    def bad_input(*args, **kwargs):
        raise UserError("x.pt is not a checkpoint; give another")

    monkeypatch.setattr(cli, "evaluate_checkpoint", bad_input)
    assert one_line_error(capsys, argv).strip() == "error: x.pt is not a checkpoint; give another"


# --- item 7: the YAML alias bomb ------------------------------------------------------------------

def alias_bomb(path: Path, levels: int) -> Path:
    """A YAML file of ``levels`` anchors, each a list of ten aliases of the one before: 10**levels values."""
    names = [chr(97 + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]" for p, n in zip(names, names[1:])]
    path.write_text("method: vicreg\ncriterion:\n  name: uniformity\n  params:\n" + "".join(f"    {l}\n" for l in lines))
    return path


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path):
    bomb = alias_bomb(tmp_path / "bomb7.yaml", 7)  # 10**7 values: ~50 MB once expanded
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="alias bomb"):
            load_config(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2 ** 20, f"{peak} bytes allocated to refuse a {bomb.stat().st_size}-byte file"
    ten = alias_bomb(tmp_path / "bomb10.yaml", 10)  # 10**10 values in half a kilobyte
    assert ten.stat().st_size < 1024
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(ten)
    names = [chr(97 + i) for i in range(8)]
    items = [f"{names[0]}: &{names[0]} [" + ", ".join(["1"] * 10) + "]"]
    items += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]" for p, n in zip(names, names[1:])]
    with pytest.raises(ConfigError, match="alias bomb"):  # an override is YAML too
        load_config(None, ["loss.params={" + ", ".join(items) + "}"])


def test_yaml_aliases_in_a_normal_configuration_still_load_and_recursion_is_refused(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("method: vicreg\neval:\n  seeds: &s [0, 1]\n  label_fractions: [0.1]\nloss: {params: {s: *s}}\n")
    config = load_config(path)
    assert config.eval.seeds == [0, 1] and config.loss.params == {"s": [0, 1]}
    path.write_text("method: vicreg\ncriterion: {name: uniformity, params: &p {t: [*p]}}\n")
    with pytest.raises(ConfigError, match="recursive structure"):
        load_config(path)


# --- item 12: malformed files ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n"])
def test_a_configuration_that_is_not_a_mapping_is_one_line(capsys, tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    err = one_line_error(capsys, ["pretrain", "--config", path, "train.epochs=1"])
    assert f"{path} must be a mapping of sections" in err


@pytest.fixture
def foreign_checkpoints(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "text.pt").write_text("hello world, not a checkpoint\n")
    (folder / "empty.pt").write_bytes(b"")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({"format": "e2mc-train-v1", "method": "vicreg", "epoch": 0, "model": {}}, folder / "noconfig.pt")
    torch.save({"format": "e2mc-train-v1", "method": "vicreg", "config": 5, "epoch": "x", "model": {}},
               folder / "badtypes.pt")
    return folder


@pytest.mark.parametrize(("name", "method", "message"), [
    ("text.pt", None, "text.pt (KeyError: 101)"),
    ("text.pt", "vicreg", "The file is truncated, corrupt or not written by torch.save"),
    ("empty.pt", None, "empty.pt is empty (0 bytes)"),
    ("tensor.pt", "vicreg", "tensor.pt holds a Tensor, not a checkpoint dict"),
    ("noconfig.pt", None, "noconfig.pt says it is an e2mc-train-v1 checkpoint but its 'config' entry is not a dict"),
    ("badtypes.pt", "vicreg", "badtypes.pt says it is an e2mc-train-v1 checkpoint but its 'config' entry"),
])
def test_a_foreign_or_damaged_checkpoint_is_one_line(capsys, tmp_path, foreign_checkpoints, name, method, message):
    argv = ["evaluate", "--checkpoint", foreign_checkpoints / name, "--results-dir", tmp_path / "out",
            "--device", "cpu", *(["--method", method] if method else [])]
    assert message in one_line_error(capsys, argv)


def grid_file(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("config: [unclosed\n", "is not valid YAML"),
    ("config: !!python/object/apply:os.system ['echo hi']\n", "no !!python tags"),
    ("config: 42\ngrid: {arm: [e2mc]}\n", "config must be a path, got 42"),
    ("config: configs/mini/{x}.yaml\ngrid: {arm: [e2mc]}\n", "has the placeholder(s) {x}; only {method}"),
    ("config: configs/mini/vicreg.yaml\noutput_root: 7\ngrid: {arm: [e2mc]}\n", "output_root must be a path"),
    ("- config\n- grid\n", "a grid file is a mapping of config, grid, overrides and output_root, not a list"),
    ("config: configs/mini/vicreg.yaml\noverrides: [3]\n", "overrides must be a list of key=value strings"),
    ("config: configs/mini/vicreg.yaml\ngrid: {arm: [e2mc]}\noverrides: [train.init=/nowhere/base.pt]\n",
     "train.init: checkpoint not found: /nowhere/base.pt"),
])
def test_a_bad_grid_file_is_one_line_before_anything_runs(capsys, tmp_path, text, message):
    err = one_line_error(capsys, ["submit", "--cluster", "debug", "--dry-run", "--grid-file", grid_file(tmp_path, text)])
    assert message in err


def test_a_repeated_grid_axis_is_refused(capsys):
    err = one_line_error(capsys, ["submit", "--cluster", "debug", "--dry-run", "--config", CONTINUE,
                                  "--grid", "train.seed=0", "--grid", "train.seed=1"])
    assert "--grid train.seed is given more than once" in err


# --- item 13: values accepted that should not be --------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("train.seed=99999999999999999999999", "train.seed must lie in [0, 2**63)"),
    ("optim.momentum=5", "optim.momentum must be < 1"),
    ("eval.seeds=[0, 0]", "eval.seeds repeats 0"),
    ("eval.label_fractions=[0.1, 0.1]", "eval.label_fractions repeats 0.1"),
    ("eval.seeds=[-1]", "eval.seeds must hold integers in [0, 2**63), got -1"),
    ("eval.protocols=[]", "eval.protocols must not be empty, e.g. eval.protocols=['linear_probe']"),
    ("eval.probe.val_fraction=1", "eval.probe.val_fraction must lie in [0, 1), got 1.0"),
    ("eval.probe.weight_decays=[0.1, -1]", "eval.probe.weight_decays must hold numbers >= 0, got -1"),
    ("eval.finetune.schedule=linear", "eval.finetune.schedule must be one of step, cosine, got 'linear'"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("eval.transfer.datasets={cifar10: ''}", "eval.transfer.datasets.cifar10 must be the dataset's local folder"),
    ("train.epochs=1", "optim.warmup_epochs=2 is longer than the training (train.epochs=1)"),
])
def test_out_of_range_values_are_refused_by_the_configuration(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(PRETRAIN, [override])  # cosine, two warm-up epochs
    assert message in str(info.value)


def test_a_folder_given_as_configuration_is_called_a_folder(capsys, tmp_path):
    assert "is a folder" in one_line_error(capsys, ["pretrain", "--config", tmp_path])


@pytest.mark.parametrize(("argv", "message"), [
    (["evaluate", "--seeds", "0", "0"], "eval.seeds repeats 0"),
    (["evaluate", "--epoch", "-7"], "--epoch: must be an integer >= 0"),
    (["evaluate", "--workers", "-1"], "--workers: must be an integer >= 0"),
    (["diagnose", "--n-pairs", "100000"], "n_pairs must lie in [1, 256]"),
])
def test_evaluation_options_are_refused_before_any_work(capsys, tmp_path, argv, message):
    missing = tmp_path / "not-read.pt"  # refused before the checkpoint is even looked at
    err = one_line_error(capsys, [*argv, "--checkpoint", missing, "--results-dir", tmp_path / "out"])
    assert message in err and "not found" not in err


def test_reproduce_refuses_no_jobs_and_entries_outside_its_grid(capsys, tmp_path):
    assert "--jobs: must be a positive integer" in one_line_error(capsys, ["reproduce", "--jobs", "0"])
    assert "--jobs: must be a positive integer" in one_line_error(capsys, ["reproduce", "--jobs", "-2"])
    err = one_line_error(capsys, ["reproduce", "--results", tmp_path / "r", "--runs", tmp_path / "runs",
                                  "--entry", "vicreg:e2mc:99"])
    assert "vicreg:e2mc:99 is not an entry of the quick grid" in err
    assert not (tmp_path / "runs").exists()


def test_a_mistyped_data_root_creates_nothing(tmp_path):
    from e2mc.data import find_fashion_mnist

    typo = tmp_path / "fasion-mnist"
    with pytest.raises(FileNotFoundError, match=f"data.root={typo} does not exist"):
        find_fashion_mnist(typo, download=True)
    assert not typo.exists()


# --- item 11: full disks, read-only places, files where folders should be ---------------------------

class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()
        super().close()


def test_a_full_disk_during_torch_save_names_the_file_and_leaves_it_untouched(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_atomic({"w": torch.ones(2)}, path)
    real_fdopen = os.fdopen
    monkeypatch.setattr(provenance.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), 100))
    with pytest.raises(UserError, match=f"cannot write {path}: no space left on the device holding {path}"):
        checkpoints.save_atomic({"w": torch.zeros(10_000)}, path)  # torch: "[enforce fail at inline_container.cc]"
    monkeypatch.undo()
    assert torch.equal(checkpoints.load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_rename_is_a_user_error_naming_the_file(tmp_path, monkeypatch, code):
    def refuse(source, target):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(provenance.os, "replace", refuse)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'a.json'}"):
        provenance.write_json_atomic(tmp_path / "a.json", {"a": 1})
    assert not list(tmp_path.iterdir())


def test_a_full_disk_leaves_no_empty_or_half_metrics_file(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)

    def full_open(path, mode="r", *args, **kwargs):
        return io.TextIOWrapper(FullDisk(open(path, mode.replace("a", "ab").replace("bb", "b")), 10))

    monkeypatch.setattr(meter, "open", full_open, raising=False)
    with pytest.raises(UserError, match="no space left on the device"):
        log.write({"kind": "step", "step": 1, "loss": 1.0})
    assert not log.path.exists()  # not an empty file
    monkeypatch.undo()
    log.write({"kind": "step", "step": 1})
    first = log.path.read_text()
    monkeypatch.setattr(meter, "open", full_open, raising=False)
    with pytest.raises(UserError):
        log.write({"kind": "step", "step": 2, "loss": 123456789.0})
    monkeypatch.undo()
    assert log.path.read_text() == first  # no half line appended


def test_a_results_folder_that_is_a_file_is_refused_before_the_checkpoint_is_read(capsys, tmp_path):
    results = tmp_path / "results"
    results.write_text("a file")
    err = one_line_error(capsys, ["evaluate", "--checkpoint", tmp_path / "never-read.pt", "--results-dir", results])
    assert f"results folder {results} is a file, not a folder" in err
    err = one_line_error(capsys, ["diagnose", "--checkpoint", tmp_path / "never-read.pt",
                                  "--results-dir", results / "sub"])
    assert "lies under a file" in err


def test_a_run_folder_blocked_by_a_file_is_named_before_any_data_are_read(capsys, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    err = one_line_error(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={tmp_path / 'no-data'}",
                                  f"train.output_dir={blocker / 'vicreg'}"])
    assert f"train.output_dir {blocker / 'vicreg'} lies under the file {blocker}, not a folder" in err


# --- item 9: notebooks' figures ---------------------------------------------------------------------

def test_figures_of_a_results_folder_elsewhere_never_go_to_the_committed_ones(tmp_path, monkeypatch):
    elsewhere = tmp_path / "scratch" / "mini"  # named like results/mini
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    results, output = notebook_io.resolve_io_dirs(elsewhere)
    assert results == elsewhere and output == elsewhere / "figures"
    assert notebook_io.resolve_io_dirs("scratch/mini")[1] == elsewhere / "figures"
    (tmp_path / "results" / "runs-a" / "mini").mkdir(parents=True)  # inside results/: its path under it
    assert notebook_io.resolve_io_dirs("results/runs-a/mini")[1] == tmp_path / "figures" / "runs-a" / "mini"
    assert notebook_io.resolve_io_dirs(tmp_path / "results" / "runs-a" / "mini")[1] == tmp_path / "figures" / "runs-a" / "mini"


# --- item 8: export-base --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A finished 0-epoch pre-training run, its export, and a 0-epoch run continued from the export."""
    tmp = tmp_path_factory.mktemp("export")
    root = write_fake_fashion_mnist(tmp / "fmnist", n_train=128, n_test=32)
    common = [f"data.root={root}", "data.batch_size=64", "model.heads={expander: [16, 16]}", "train.epochs=0"]
    train(load_config(PRETRAIN, [*common, f"train.output_dir={tmp / 'scratch'}"]))
    base = reproduce.export_base_checkpoint(tmp / "scratch", tmp / "bases" / "vicreg.pt")
    train(load_config(CONTINUE, [*common, f"train.output_dir={tmp / 'continued'}", f"train.init={base}"]))
    return tmp


def test_export_base_refuses_to_overwrite_without_force(capsys, finished_runs):
    destination = finished_runs / "bases" / "vicreg.pt"
    before = destination.read_bytes(), destination.with_suffix(".json").read_text()
    err = one_line_error(capsys, ["export-base", "--run", finished_runs / "scratch", "--to", destination])
    assert f"{destination} exists; pass --force" in err
    assert (destination.read_bytes(), destination.with_suffix(".json").read_text()) == before
    assert main(["export-base", "--run", str(finished_runs / "scratch"), "--to", str(destination), "--force"]) == 0


def test_export_base_says_a_continued_run_was_continued(finished_runs):
    base = finished_runs / "bases" / "vicreg.pt"
    exported = reproduce.export_base_checkpoint(finished_runs / "continued", finished_runs / "out" / "cont.pt")
    record = json.loads(exported.with_suffix(".json").read_text())
    assert record["what"] == f"mini vicreg base checkpoint: continued from {base} on Fashion-MNIST"
    assert "from scratch" not in record["what"] and record["init"] == str(base)
    scratch = json.loads(base.with_suffix(".json").read_text())
    assert scratch["what"] == "mini vicreg base checkpoint: pre-trained from scratch on Fashion-MNIST"


def test_export_base_with_broken_metrics_writes_nothing(capsys, finished_runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((finished_runs / "scratch" / "checkpoint.pt").read_bytes())
    (run / "metrics.jsonl").write_text('{"kind": "segment", "sec')  # cut mid-line
    err = one_line_error(capsys, ["export-base", "--run", run, "--to", tmp_path / "out" / "vicreg.pt"])
    assert f"{run / 'metrics.jsonl'} cannot be read" in err
    assert not (tmp_path / "out" / "vicreg.pt").exists() and not (tmp_path / "out" / "vicreg.json").exists()
