"""The reproduction grid: arms configure what they are named, and an entry writes every result."""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pytest

from e2mc.methods import get_method, method_names
from e2mc import experiments, reports, reproduce
from e2mc.config import load_config
from e2mc.naming import infer_arm
from e2mc.results import load
from e2mc.train import train
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("arm", experiments.parts()["full"].grid, ids=lambda a: f"{a.method}-{a.name}")
def test_every_arm_configures_the_arm_it_is_named_after(tmp_path, arm):
    cfg = experiments.entry_config(arm, 1, tmp_path / "results", tmp_path / "runs")
    assert infer_arm(cfg.to_dict()) == arm.name
    assert cfg.train.seed == 1 and cfg.eval.seeds == [1] and cfg.train.epochs == 10
    # the fractions probed every epoch are one configuration in whatever order they are given
    every = experiments.entry_config(arm, 1, tmp_path / "results", tmp_path / "runs", epoch_fractions=(1.0, 0.01, 0.1))
    assert every.eval.label_fractions == [0.01, 0.1, 1.0]
    assert every.hash() == experiments.entry_config(arm, 1, tmp_path / "results", tmp_path / "runs",
                                                    epoch_fractions=(0.01, 0.1, 1.0, 0.1)).hash() != cfg.hash()


def test_full_grid_has_three_seeds_of_every_arm_and_each_base():
    full = experiments.entries("full")
    bases = len(method_names())
    grid = experiments.parts()["full"].grid
    searches = [a for a in grid if a.seeds is not None]  # short searches: their seeds only
    assert searches and all(a.seeds == (0,) for a in searches)
    assert len(full) == len(set(full)) == bases + 3 * (len(grid) - len(searches)) + len(searches)
    assert set(experiments.entries("quick")) <= set(full)
    # order: bases, then original vs E2MC at every seed, then the other arms one seed at a time
    position = {entry: i for i, entry in enumerate(full)}
    main = [e for e in full if e[1] in ("original", "e2mc")]
    others = [e for e in full if e[1] not in ("base", "original", "e2mc")]
    assert [e[1] for e in full[:bases]] == ["base"] * bases
    assert max(position[e] for e in main) < min(position[e] for e in others)
    assert max(position[e] for e in others if e[2] == 0) < min(position[e] for e in others if e[2] == 1)
    with pytest.raises(ValueError, match="part must be one of converged, full, preregistered, quick"):
        experiments.entries("most")


def one_epoch_grid(tmp_path, monkeypatch, n_train: int = 512) -> tuple[Path, Path]:
    """Fake Fashion-MNIST and an untrained VICReg base checkpoint; a grid of one epoch and one seed.
    Returns (data root, checkpoints folder)."""
    data_root = write_fake_fashion_mnist(tmp_path / "fmnist", n_train=n_train, n_test=200)
    pretrain = tmp_path / "pretrain"
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml",
                      [f"data.root={data_root}", "train.epochs=0", f"train.output_dir={pretrain}"]))
    checkpoints = tmp_path / "checkpoints"
    reproduce.export_base_checkpoint(pretrain, experiments.base_checkpoint(checkpoints, "vicreg"))
    for name, part in list(experiments.parts().items()):
        monkeypatch.setitem(experiments.parts(), name, dataclasses.replace(part, epochs=1, seeds=(0,)))
    monkeypatch.setattr(reproduce, "DIAGNOSTIC_IMAGES", 100)
    return data_root, checkpoints


def test_entry_writes_probes_diagnostics_and_training_then_skips(tmp_path, monkeypatch):
    data_root, checkpoints = one_epoch_grid(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"

    assert reproduce.run_one("vicreg", "base", 0, results, runs, str(data_root), checkpoints) == "done"
    assert reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), checkpoints) == "done"
    assert reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), checkpoints) == "skipped"

    frame = load(results)
    probes = frame[frame.kind == "linear_probe"]
    base = probes[probes.arm == "base"]
    assert sorted(base.label_fraction) == [0.01, 0.1, 1.0] and set(base.epoch) == {0}
    e2mc = probes[probes.arm == "e2mc"]
    assert sorted(zip(e2mc.epoch, e2mc.label_fraction)) == [(0, 0.01), (1, 0.01), (1, 0.1), (1, 1.0)]
    assert sorted(frame[frame.kind == "diagnostics"].arm) == ["base", "e2mc"]
    training = frame[frame.kind == "training"].iloc[0]
    assert [r["epoch"] for r in training.extra["epochs"]] == [1]
    assert [seg["origin"].split()[0] for seg in training.extra["segments"]] == ["started"]
    segment = training.extra["segments"][0]["provenance"]  # the code that trained it, diff hash if dirty
    assert {"git_commit", "git_dirty", "git_diff_sha256"} <= set(segment)
    assert segment["git_commit"] == training.provenance_git_commit
    exported = json.loads(experiments.base_checkpoint(checkpoints, "vicreg").with_suffix(".json").read_text())
    assert [seg["origin"] for seg in exported["training_segments"]] == ["random initialisation"]
    assert exported["training_segments"][0]["provenance"]["git_commit"] == exported["export_provenance"]["git_commit"]
    assert training.criterion_name == "e2mc"
    table = reports.compare(results, results).splitlines()
    assert len(table) == 2 + 3 + 3  # header, base at 3 fractions, e2mc's last epoch at 3 fractions
    row = next(line for line in table if "| e2mc | 10% |" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == cells[5] == f"{e2mc[(e2mc.epoch == 1) & (e2mc.label_fraction == 0.1)].top1.item():.2f}"
    with pytest.raises(ValueError, match="no arm 'mmcr' for vicreg"):
        reproduce.run_one("vicreg", "mmcr", 0, results, runs)

    # the done marker is found whatever hash its name carries; another configuration is an error
    marker = next((results / "training").glob("training_vicreg_e2mc_*.json"))
    renamed = marker.rename(marker.with_name(marker.name.rsplit("_", 1)[0] + "_00000000.json"))
    assert reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), checkpoints) == "skipped"
    record = json.loads(renamed.read_text())
    record["config"]["optim"]["base_lr"] *= 2
    renamed.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="another configuration"):
        reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), checkpoints)

    # so are the base checkpoint's probes: renamed as an older hash would name them, none is redone
    for probe in (results / "linear_probe").glob("linear_probe_vicreg_base_*.json"):
        probe.rename(probe.with_name(probe.name.rsplit("_", 1)[0] + "_11111111.json"))
    before = sorted(p.name for p in (results / "linear_probe").iterdir())
    assert reproduce.run_one("vicreg", "base", 0, results, runs, str(data_root), checkpoints) == "done"
    assert sorted(p.name for p in (results / "linear_probe").iterdir()) == before
    probe = next((results / "linear_probe").glob("linear_probe_vicreg_base_*_f10pct_*.json"))
    record = json.loads(probe.read_text())
    record["config"]["optim"]["base_lr"] *= 2
    probe.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="another configuration"):
        reproduce.run_one("vicreg", "base", 0, results, runs, str(data_root), checkpoints)


def test_every_fraction_can_be_probed_after_every_epoch(tmp_path, monkeypatch):
    data_root, checkpoints = one_epoch_grid(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"
    every = reproduce.LABEL_FRACTIONS
    assert reproduce.run_one("vicreg", "original", 0, results, runs, str(data_root), checkpoints, every) == "done"
    probes = load(results / "linear_probe")
    assert sorted(zip(probes.epoch, probes.label_fraction)) == [(e, f) for e in (0, 1) for f in every]
    assert all(record["eval"]["label_fractions"] == list(every) for record in probes.config)
    # the same entry probed the default way is another configuration: an error, not a silent mix
    with pytest.raises(ValueError, match="another configuration"):
        reproduce.run_one("vicreg", "original", 0, results, runs, str(data_root), checkpoints)
    # nor does another results folder take up the finished run of that configuration (it would not
    # train again, so its per-epoch probes would be missing): the run folder must be another too
    other_results = tmp_path / "results-default"
    with pytest.raises(ValueError, match=r"checkpoint.pt holds a run of another configuration .* another --runs"):
        reproduce.run_one("vicreg", "original", 0, other_results, runs, str(data_root), checkpoints)
    assert not other_results.exists()
    assert reproduce.run_one("vicreg", "original", 0, other_results, tmp_path / "runs-default", str(data_root),
                             checkpoints) == "done"
    assert sorted(load(other_results / "linear_probe").epoch) == [0, 1, 1, 1]
    # the command line takes only the fractions the grid reports
    assert reproduce._label_fraction("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match="0.5 is not one of the grid's label fractions 0.01 0.1 1"):
        reproduce._label_fraction("0.5")


def test_run_logged_keeps_every_line_and_echoes_progress(tmp_path, capsys):
    script = "import sys; print('[e2mc] epoch 1/10: loss 1.0'); print('noise'); print('err', file=sys.stderr); sys.exit(3)"
    log = tmp_path / "entry.log"
    log.write_text("earlier attempt\n")
    assert reproduce.run_logged([sys.executable, "-c", script], log, "vicreg/e2mc/seed0") == 3
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier attempt"
    assert sorted(lines[1:]) == sorted(["[e2mc] epoch 1/10: loss 1.0", "noise", "err"])  # stderr too
    assert capsys.readouterr().out == "[vicreg/e2mc/seed0] epoch 1/10: loss 1.0\n"


def test_the_committed_grid_is_found_finished():
    """A dry run of `make reproduce-full` has nothing of the paper's methods left to train: the 63
    committed entries of results/mini are found as finished under today's configuration hashes."""
    # as `make reproduce-full` runs it: the checkpoints path relative to the repository (train.init is hashed)
    todo = experiments.pending("full", ROOT / "results" / "mini", ROOT / "runs" / "mini", Path("results/mini/checkpoints"))
    done = [e for e in experiments.entries("full") if e not in todo]
    assert len([e for e in done if get_method(e[0]).in_paper]) == 63
    assert not [e for e in todo if get_method(e[0]).in_paper]


def test_notebooks_only_runs_the_named_notebooks_of_the_folder(tmp_path, monkeypatch, capsys):
    from e2mc.__main__ import main

    results = tmp_path / "results" / "study"
    (results / "plateau").mkdir(parents=True)  # a converged folder: its notebooks include the two extra
    ran = []
    monkeypatch.setattr(reports, "execute_notebook", lambda notebook, output, parameters: ran.append(notebook.stem))
    assert main(["notebooks", "--results", str(results), "--only", "preregistered", "tables"]) in (0, None)
    assert ran == ["tables", "preregistered"]  # in the folder's order, nothing else
    ran.clear()
    assert main(["notebooks", "--results", str(results)]) in (0, None)
    assert ran == list(reports.NOTEBOOKS + reports.CONVERGED_NOTEBOOKS)
    (tmp_path / "results" / "mini").mkdir()  # a folder of the main grid has no pre-registered notebook
    ran.clear()
    assert main(["notebooks", "--results", str(tmp_path / "results" / "mini"), "--only", "preregistered"]) == 2
    assert "the notebooks of" in capsys.readouterr().err and not ran
