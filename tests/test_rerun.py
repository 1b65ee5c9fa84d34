"""Computing finished entries again: every file of the entry is set aside (not lost), the entry runs
anew, and a re-run of unchanged code gives the numbers it gave before."""
import argparse
import json

import pytest

from e2mc import experiments, provenance, rerun, reproduce
from e2mc.errors import UserError
from test_reproduce import one_epoch_grid


def _mark_dirty(path, where="provenance"):
    record = json.loads(path.read_text())
    if where == "provenance":
        record["provenance"]["git_dirty"] = True
    else:  # the first training segment: a run resumed from a dirty checkout
        record["extra"]["segments"][0]["provenance"]["git_dirty"] = True
    path.write_text(json.dumps(record))


def test_a_dirty_entry_is_set_aside_and_computed_again_to_the_same_numbers(tmp_path, monkeypatch):
    # the files record a clean checkout whatever the state of the one the tests run from
    monkeypatch.setattr(provenance, "code_state", lambda: {"commit": "c" * 40, "dirty": False, "diff_sha256": None})
    data_root, checkpoints = one_epoch_grid(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"
    part = experiments.get_part("full", checkpoints)
    for label in ("base", "original", "e2mc"):
        assert reproduce.run_one("vicreg", label, 0, results, runs, str(data_root), checkpoints) == "done"

    # the entry's files, found by name here: every kind, every epoch and fraction of that arm and seed
    mine = sorted(p for p in results.rglob("*_vicreg_e2mc_fashion_mnist_*_s0_*.json"))
    assert {p.parent.name for p in mine} == {"training", "linear_probe", "diagnostics"} and len(mine) == 6
    assert sorted(rerun.entry_results(part, ("vicreg", "e2mc", 0), results)) == mine
    base = rerun.entry_results(part, ("vicreg", "base", 0), results)
    assert sorted(base) == sorted(results.rglob("*_vicreg_base_*.json"))

    assert rerun.dirty_entries(part, results) == []
    _mark_dirty(next((results / "training").glob("training_vicreg_e2mc_*.json")), where="segment")
    _mark_dirty(next((results / "linear_probe").glob("linear_probe_vicreg_base_*_f10pct_*.json")))
    assert rerun.dirty_entries(part, results) == [("vicreg", "base", 0), ("vicreg", "e2mc", 0)]

    before = {p.relative_to(results): json.loads(p.read_text()) for p in mine}
    run_dir = runs / "vicreg" / "e2mc" / "seed0"
    assert (run_dir / "checkpoint.pt").exists()
    attic, moved = rerun.set_aside(part, [("vicreg", "e2mc", 0)], results, runs)
    assert moved == len(mine) + 1 and attic.parent == runs / rerun.REPLACED_DIR
    assert not any(p.exists() for p in mine) and not run_dir.exists()
    assert {p.relative_to(attic / "results") for p in (attic / "results").rglob("*.json")} == set(before)
    assert (attic / "runs" / "vicreg" / "e2mc" / "seed0" / "checkpoint.pt").exists()
    assert len(list(results.rglob("*_vicreg_original_*.json"))) == 6  # the other entries stay

    assert reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), checkpoints) == "done"
    after = {p.relative_to(results): json.loads(p.read_text()) for p in sorted(results.rglob("*_vicreg_e2mc_*.json"))}
    assert set(after) == set(before)
    for name, record in after.items():  # same code, same seed: the same numbers
        assert record["metrics"] == before[name]["metrics"], name
    assert rerun.dirty_entries(part, results) == [("vicreg", "base", 0)]  # the entry re-run is clean


def _args(**given):
    defaults = dict(part="full", checkpoints=None, epoch_fractions=None, methods=None, results=None, runs=None,
                    dry_run=True, entry=None, rerun=None, rerun_dirty=False, jobs=1, data_root=None, compare_to=None)
    return argparse.Namespace(**{**defaults, **given})


def test_rerun_names_entries_of_the_grid_only(tmp_path, capsys):
    folders = dict(results=str(tmp_path / "results"), runs=str(tmp_path / "runs"))
    with pytest.raises(UserError, match="vicreg:nothing:0 is not an entry of the full grid"):
        reproduce._reproduce_command(_args(rerun=["vicreg:nothing:0"], **folders))
    with pytest.raises(UserError, match="METHOD:ARM:SEED"):
        reproduce._reproduce_command(_args(rerun=["vicreg-e2mc-0"], **folders))
    with pytest.raises(UserError, match="leave out --entry"):
        reproduce._reproduce_command(_args(rerun=["vicreg:e2mc:0"], entry="vicreg:e2mc:0", **folders))
    with pytest.raises(UserError, match="pre-training run"):
        rerun.entry_results(experiments.get_part("converged"), ("swav", "plateau", 0), tmp_path)
    assert reproduce._reproduce_command(_args(rerun=["vicreg:e2mc:1"], rerun_dirty=True, **folders)) == 0
    out = capsys.readouterr().out
    assert "vicreg:e2mc:1 (0 result files)" in out and "1 entries of the full grid" in out
