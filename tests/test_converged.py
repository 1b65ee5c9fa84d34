"""The converged part of the reproduction (issue 15): its entries and configurations, one toy entry
end to end, the plateau sweep, and the tables and figure drawn from them."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

from e2mc import checkpoints as ckpt, converged_plots, converged_tables, experiments, notebook_io, plots, reproduce
from e2mc.evaluation import transfer
from e2mc.results import load
from test_reproduce import one_epoch_grid


def converged(tmp_path, **changes) -> experiments.Part:
    return dataclasses.replace(experiments.parts()["converged"], pretrain_runs=str(tmp_path / "pretrain-runs"),
                               **changes)


def test_converged_entries_and_configurations(tmp_path):
    part = converged(tmp_path)
    todo = experiments.entries(part)
    assert todo[:4] == [("vicreg", "base", 0), ("swav", "base", 0), ("vicreg", "plateau", 0), ("swav", "plateau", 0)]
    main = [(m, a, s) for m in ("vicreg", "swav") for a in ("original", "e2mc") for s in (0, 1, 2)]
    lr = [("vicreg", f"{a}-lr{f}x", 0) for f in ("0.3", "3") for a in ("original", "e2mc")]
    assert sorted(todo[4:]) == sorted(main + lr) and len(todo) == len(set(todo)) == 4 + 12 + 4
    # simsiam joins when its converged pre-training run exists
    (tmp_path / "pretrain-runs" / "simsiam").mkdir(parents=True)
    assert ("simsiam", "plateau", 0) in experiments.entries(part)
    assert [e for e in experiments.entries(experiments.get_part(part, methods=("swav",))) if e[0] != "swav"] == []

    results, runs = tmp_path / "results", tmp_path / "runs"
    e2mc = experiments.find_arm(part, "vicreg", "e2mc")
    cfg = experiments.entry_config(e2mc, 1, results, runs, part=part)
    assert cfg.train.epochs == 20 and cfg.eval.label_fractions == [0.01] and cfg.eval.seeds == [1]
    assert cfg.eval.probe.val_fraction == 0.1 and cfg.train.init == "results/mini-converged/checkpoints/vicreg.pt"
    assert part.all_fractions_at == (10,) and part.transfer == (("digits", "bundled"),)
    assert cfg.eval.results_dir == str(results / "linear_probe")
    # the learning-rate variants: the same arm name in their results, told apart by their folder
    base_lr = cfg.optim.base_lr
    for factor in (0.3, 3.0):
        arm = experiments.find_arm(part, "vicreg", f"e2mc-lr{factor:g}x")
        varied = experiments.entry_config(arm, 0, results, runs, part=part)
        assert varied.optim.base_lr == pytest.approx(base_lr * factor) and arm.name == "e2mc"
        assert varied.eval.results_dir == str(results / "variants" / f"lr{factor:g}x" / "linear_probe")
        assert varied.train.output_dir == str(runs / "vicreg" / f"e2mc-lr{factor:g}x" / "seed0")
    # 1x is the main grid's seed 0, not run twice
    assert not any("lr1x" in label for _, label, _ in todo)
    # the quick and full parts are as before: 10 epochs, no validation split, the committed bases
    full = experiments.entry_config(experiments.find_arm(experiments.parts()["full"], "vicreg", "e2mc"), 0, results, runs)
    assert full.train.epochs == 10 and full.eval.probe.val_fraction is None
    with pytest.raises(ValueError, match="the converged part has no method barlowtwins"):
        experiments.get_part(part, methods=("barlowtwins",))


def test_missing_or_unfinished_bases_name_the_pretrain_command(tmp_path, monkeypatch):
    data_root, checkpoints = one_epoch_grid(tmp_path, monkeypatch)
    part = converged(tmp_path, checkpoints=str(tmp_path / "converged-checkpoints"), methods=("vicreg", "swav"))
    with pytest.raises(FileNotFoundError, match=r"holds no pre-training run; run `make pretrain-mini-converged`"):
        reproduce.ensure_bases(part)
    # an unfinished run: checkpoint.pt short of its epochs
    state = ckpt.load(tmp_path / "pretrain" / "checkpoint.pt")
    unfinished = tmp_path / "pretrain-runs" / "swav"
    unfinished.mkdir(parents=True)
    ckpt.save_atomic({**state, "config": {**state["config"], "train": {**state["config"]["train"], "epochs": 100}}},
                     unfinished / "checkpoint.pt")
    (tmp_path / "pretrain-runs" / "vicreg").symlink_to(tmp_path / "pretrain")
    with pytest.raises(FileNotFoundError, match=r"swav.pt is missing: .*stopped at epoch 0 of 100.*"
                                                r"`make pretrain-mini-converged` resumes it"):
        reproduce.ensure_bases(part)
    reproduce.ensure_bases(dataclasses.replace(part, methods=("vicreg",)))  # exported, with its provenance
    exported = json.loads((tmp_path / "converged-checkpoints" / "vicreg.json").read_text())
    assert exported["epochs"] == 0 and "export_provenance" in exported


class FakeDigits(Dataset):
    """A stand-in for the bundled digits: random 8 x 8 grey images of 10 classes."""

    def __init__(self, split, transform):
        n = 100 if split == "train" else 40
        generator = np.random.default_rng(0 if split == "train" else 1)
        self.images = generator.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index], mode="L")
        return (self.transform(image) if self.transform else image), self.targets[index]


def test_a_converged_entry_end_to_end(tmp_path, monkeypatch):
    """Base, one arm and one LR variant of a toy converged part (2 epochs, all fractions after epoch 1,
    val-selected probes, a transfer set), then its tables and the paired comparison."""
    data_root, checkpoints = one_epoch_grid(tmp_path, monkeypatch, n_train=2000)
    spec = dataclasses.replace(next(iter(transfer.TRANSFER_DATASETS.values())), build=lambda r, s, t: FakeDigits(s, t),
                               train_split="train", test_split="test", splits=("train", "test"))
    monkeypatch.setitem(transfer.TRANSFER_DATASETS, "digits", spec)
    (tmp_path / "digits").mkdir()
    part = converged(tmp_path, checkpoints=str(checkpoints), methods=("vicreg",), optional_methods=(), epochs=2,
                     all_fractions_at=(1,), seeds=(0,), transfer=(("digits", str(tmp_path / "digits")),))
    results, runs = tmp_path / "results", tmp_path / "runs"
    for label in ("base", "original", "e2mc", "e2mc-lr3x"):
        assert reproduce.run_one("vicreg", label, 0, results, runs, str(data_root), part=part) == "done"
    assert reproduce.run_one("vicreg", "e2mc-lr3x", 0, results, runs, str(data_root), part=part) == "skipped"
    assert experiments.pending(part, results, runs) == [("vicreg", "plateau", 0), ("vicreg", "original-lr0.3x", 0),
                                                      ("vicreg", "e2mc-lr0.3x", 0), ("vicreg", "original-lr3x", 0)]

    frame = load(results)  # variants/ left out
    probes = frame[(frame.kind == "linear_probe") & (frame.arm == "e2mc")]
    assert sorted(zip(probes.epoch, probes.label_fraction)) == [(0, 0.01), (1, 0.01), (1, 0.1), (1, 1.0),
                                                                (2, 0.01), (2, 0.1), (2, 1.0)]
    assert frame[frame.kind == "linear_probe"].top1_val_selected.notna().all()
    assert all(s["val_fraction"] == 0.1 for s in frame[frame.kind == "linear_probe"].extra.map(lambda e: e["settings"]))
    assert sorted(frame[frame.kind == "transfer"].arm) == ["base", "e2mc", "original"]
    assert sorted(frame[frame.kind == "training"].arm) == ["e2mc", "original"]
    variant = load(results / "variants" / "lr3x")
    assert set(variant.arm) == {"e2mc"}
    training = variant[variant.kind == "training"].iloc[0]
    assert training.extra["variant"] == "lr3x"
    assert training.config["optim"]["base_lr"] == pytest.approx(3 * frame[frame.kind == "training"].config.iloc[0]
                                                                ["optim"]["base_lr"])

    made, skipped = converged_tables.converged_tables(frame, notebook_io.load_variants(results))
    names = [t.name for t in made]
    assert names == ["main_results_val_selected", "paired_comparison_val_selected", "paired_comparison_top1",
                     "paired_comparison_original_vs_base_val_selected", "paired_comparison_e2mc_vs_base_val_selected",
                     "transfer_val_selected", "learning_rate_check_top1_val_selected", "learning_rate_check_top1"]
    main = made[0]
    assert main.header[3:6] == ["1% val-selected", "1% last epoch", "1% best epoch"]
    assert [row[1] for row in main.rows] == ["base checkpoint", "original loss", "E2MC"]
    versus_base = made[3].numbers[made[3].numbers["metric"] == "top1_val_selected"].set_index("label_fraction")
    probes = frame[(frame.kind == "linear_probe") & (frame.seed == 0)].set_index(["arm", "epoch", "label_fraction"])
    assert versus_base.loc[0.01, "mean"] == pytest.approx(probes.loc[("original", 2, 0.01), "top1_val_selected"]
                                                         - probes.loc[("base", 0, 0.01), "top1_val_selected"])
    assert versus_base.loc[0.01, "baseline_epoch"] == 0 and versus_base.loc[0.01, "epoch"] == 2
    lr = made[6]
    assert [(row[1], row[2]) for row in lr.rows] == [("E2MC", "1×"), ("E2MC", "3×")]
    figure = plots.fig6_epochs(frame, metric="top1_val_selected")
    assert figure.axes


def test_plateau_probes_every_fifth_kept_epoch(tmp_path, monkeypatch):
    data_root, _ = one_epoch_grid(tmp_path, monkeypatch, n_train=2000)
    state = ckpt.load(tmp_path / "pretrain" / "checkpoint.pt")
    state["config"]["train"]["epochs"] = 12
    run = tmp_path / "pretrain-runs" / "vicreg"
    run.mkdir(parents=True)
    for epoch in range(13):
        ckpt.save_atomic(ckpt.slim(state) | {"epoch": epoch},
                         run / f"checkpoint-epoch{epoch:03d}.pt")
    part = converged(tmp_path, methods=("vicreg",), optional_methods=())
    with pytest.raises(FileNotFoundError, match=r"holds no pre-training run; run `make pretrain-mini-converged`"):
        experiments.plateau_epochs(part, "vicreg")
    ckpt.save_atomic({**state, "epoch": 3, "step": 0}, run / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match=r"stopped at epoch 3 of 12; finish it with `make pretrain-mini"):
        experiments.plateau_epochs(part, "vicreg")
    ckpt.save_atomic({**state, "epoch": 12, "step": 0}, run / "checkpoint.pt")
    assert experiments.plateau_epochs(part, "vicreg") == [0, 5, 10, 12]
    results = tmp_path / "results"
    assert reproduce.run_one("vicreg", "plateau", 0, results, tmp_path / "runs", str(data_root), part=part) == "done"
    plateau = notebook_io.load_results(results / "plateau")
    assert sorted(plateau.epoch) == [0, 5, 10, 12] and set(plateau.arm) == {"base"}
    assert set(plateau.label_fraction) == {0.01} and plateau.top1_val_selected.notna().all()
    assert ("vicreg", "plateau", 0) not in experiments.pending(part, results, tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="no result files"):  # load(results) leaves plateau/ out
        load(results)
    figure = converged_plots.pretraining_plateau(plateau)
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["val-selected", "best epoch"]

    # A fresh clone holds the committed sweep but not the pre-training run: done, and not re-run;
    # with one of its epochs missing it is pending again (and fails naming the pretrain command).
    shutil.rmtree(run)
    assert ("vicreg", "plateau", 0) not in experiments.pending(part, results, tmp_path / "runs")
    assert reproduce.run_one("vicreg", "plateau", 0, results, tmp_path / "runs", str(data_root), part=part) == "skipped"
    next((results / "plateau" / "linear_probe").glob("*_e010_*")).unlink()
    assert ("vicreg", "plateau", 0) in experiments.pending(part, results, tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="holds no pre-training run"):
        reproduce.run_one("vicreg", "plateau", 0, results, tmp_path / "runs", str(data_root), part=part)
