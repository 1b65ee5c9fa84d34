"""Provenance that is true (issue 21): relative paths in committed results, the diff of a dirty tree,
and no writing into committed result folders from one."""
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from e2mc import migrations, provenance
from e2mc.__main__ import main
from e2mc.results import config_hash

ROOT = Path(__file__).resolve().parents[1]
# Copies of committed files as the runs wrote them, before `migrate paths`: a probe of the main grid run
# from the checkout /work/grid into /work/main, a probe run from /work/main, a training result whose
# segments resumed from an absolute checkpoint path, a base checkpoint's provenance.
WRITTEN = ROOT / "tests" / "fixtures" / "provenance"
MACHINE_PREFIXES = ("/work/", "/root/", "/home/", "/tmp/", "/Users/")


def test_committed_results_hold_no_absolute_path_of_a_machine():
    offending = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "results").rglob("*.json"))
                 if any(prefix in p.read_text() for prefix in MACHINE_PREFIXES)]
    assert not offending, f"{len(offending)} file(s), e.g. {offending[:3]}: run python -m e2mc migrate paths"


def _leaves(value, where=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}[{i}]")
    else:
        yield where, value


def _expected(text: str) -> str:
    """The migrated string written another way: plain replacements of the two checkouts these files name."""
    text = text.replace("/work/grid/e2mc/__main__.py", "python -m e2mc").replace(
        "/work/main/e2mc/__main__.py", "python -m e2mc")
    return text.replace("/work/main/", "").replace("/work/grid/", "")


def _assert_only_paths_changed(before, after):
    b, a = list(_leaves(before)), list(_leaves(after))
    assert [w for w, _ in b] == [w for w, _ in a]  # same keys in the same order, same list lengths
    for (where, old), (_, new) in zip(b, a):
        if isinstance(old, str):
            assert new == _expected(old), where
        else:
            assert type(new) is type(old) and new == old, where  # numbers, booleans, nulls untouched


def test_migrate_paths_changes_only_the_paths_of_real_files(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(WRITTEN, folder)
    before = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert all(migrations.absolute_paths(r) for r in before.values())

    assert main(["migrate", "paths", "--results", str(folder)]) == 0

    after = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert sorted(after) == sorted(before)  # file names (they carry the config hash) as they were
    for name, record in after.items():
        assert not migrations.absolute_paths(record), name
        _assert_only_paths_changed(before[name], record)
        if "config_hash" in record:  # result files (a base checkpoint's provenance has none)
            assert record["config_hash"] == before[name]["config_hash"]
            assert config_hash(record["config"]) == config_hash(before[name]["config"])
    probe = after["linear_probe_simsiam_e2mc_fashion_mnist_e010_f100pct_s0_b0b1325e.json"]
    assert probe["provenance"]["command"] == ("python -m e2mc reproduce --entry simsiam:e2mc:0 --results results/mini "
                                              "--runs runs/mini --checkpoints results/mini/checkpoints")
    assert probe["config"]["eval"]["results_dir"] == "results/mini/linear_probe"
    assert probe["checkpoint"] == "runs/mini/simsiam/e2mc/seed0/checkpoint.pt"
    # the same formatting as write_json_atomic: a file differs from its copy only on the lines of a path
    text = (folder / "vicreg.json").read_text()
    assert text == json.dumps(after["vicreg.json"], indent=2) + "\n"

    written = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert main(["migrate", "paths", "--results", str(folder)]) == 0  # a second run changes nothing
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == written


def test_migrate_paths_keeps_paths_outside_the_checkouts_and_every_number():
    record = {"metrics": {"top1": 71.30000000000001, "n": 3, "flag": True}, "none": None,
              "config": {"data": {"root": "/usr/share/datasets/fashion-mnist"},
                         "train": {"output_dir": "/home/u/e2mc/runs/a", "init": "results/mini/checkpoints/swav.pt"},
                         "eval": {"results_dir": "/home/u/e2mc"}},
              "notes": ["/home/u/e2mc-other/x", "/home/u/e2mcx", "ratio 1/2", "see /home/u/e2mc/README.md."],
              "provenance": {"command": "/home/u/e2mc/e2mc/__main__.py sweep --run=/home/u/e2mc/runs/a "
                                        "train.output_dir=/home/u/e2mc/runs/b --data-root /usr/share/datasets"}}
    migrated = migrations.relative_paths(record, {"/home/u/e2mc"})
    assert migrated == {
        "metrics": {"top1": 71.30000000000001, "n": 3, "flag": True}, "none": None,
        "config": {"data": {"root": "/usr/share/datasets/fashion-mnist"},
                   "train": {"output_dir": "runs/a", "init": "results/mini/checkpoints/swav.pt"},
                   "eval": {"results_dir": "."}},
        "notes": ["/home/u/e2mc-other/x", "/home/u/e2mcx", "ratio 1/2", "see README.md."],
        "provenance": {"command": "python -m e2mc sweep --run=runs/a train.output_dir=runs/b "
                                  "--data-root /usr/share/datasets"}}
    assert json.dumps(migrated["metrics"]) == json.dumps(record["metrics"])
    # the checkout a command ran from is found from the path of its __main__.py
    assert migrations.checkout_roots([record]) == {"/home/u/e2mc", str(provenance.REPO_ROOT)}


# --- git state -----------------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True).stdout


@pytest.fixture
def checkout(tmp_path):
    """A git checkout with a committed result and a code file."""
    repo = tmp_path / "repo"
    (repo / "results" / "mini").mkdir(parents=True)
    (repo / "results" / "mini" / "r.json").write_text("{}\n")
    (repo / "elsewhere").mkdir()
    (repo / "elsewhere" / "tracked.json").write_text("{}\n")
    (repo / "code.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("/results/*-quick/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "c")
    return repo


def test_a_dirty_tree_records_the_hash_of_the_patch_that_recreates_it(checkout, tmp_path):
    clean = provenance.git_commit(checkout)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["commit"]) == 40
    (checkout / "code.py").write_text("x = 2\n")
    (checkout / "results" / "mini" / "r.json").write_text('{"a": 1}\n')
    _git(checkout, "add", "code.py")  # staged changes count as well as unstaged ones
    dirty = provenance.git_commit(checkout)
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"]
    patch = _git(checkout, "diff", "HEAD", "--binary", "--", "code.py")  # the code's patch, not the record's
    assert dirty["diff_sha256"] == hashlib.sha256(patch).hexdigest()
    # the patch it names turns the recorded commit into the code that ran
    copy = tmp_path / "copy"
    _git(tmp_path, "clone", "-q", str(checkout), str(copy))
    (tmp_path / "p.diff").write_bytes(patch)
    _git(copy, "apply", str(tmp_path / "p.diff"))
    assert (copy / "code.py").read_text() == "x = 2\n"
    (checkout / "code.py").write_text("x = 3\n")
    assert provenance.git_commit(checkout)["diff_sha256"] != dirty["diff_sha256"]


def test_a_tree_whose_only_changes_are_result_records_is_clean(checkout):
    """Re-running a committed entry rewrites (or first sets aside) its records; that is not a change of
    the code, and must not mark the rewritten files, or the entries after them, dirty."""
    clean = provenance.git_commit(checkout)
    (checkout / "results" / "mini" / "r.json").write_text('{"a": 1}\n')
    assert provenance.git_commit(checkout) == clean
    (checkout / "results" / "mini" / "r.json").unlink()
    assert provenance.git_commit(checkout) == clean
    (checkout / "elsewhere" / "tracked.json").write_text('{"b": 2}\n')  # a JSON file outside results/ is code
    assert provenance.git_commit(checkout)["dirty"] is True


def test_results_record_the_diff_hash_field():
    record = provenance.provenance()
    assert "git_diff_sha256" in record
    assert (record["git_diff_sha256"] is None) == (not record["git_dirty"])


def test_a_dirty_tree_may_not_write_into_committed_result_folders(checkout, tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.ALLOW_DIRTY_VARIABLE, raising=False)
    dirty, clean = {"dirty": True}, {"dirty": False}
    for target in (checkout / "results" / "mini", checkout / "results" / "new" / "linear_probe",
                   checkout / "results", checkout / "elsewhere", checkout / "elsewhere" / "tracked.json"):
        with pytest.raises(provenance.DirtyTreeError, match="commit or stash .* E2MC_ALLOW_DIRTY=1"):
            provenance.require_clean_tree(None, target, state=dirty)
        provenance.require_clean_tree(target, state=clean)
    (tmp_path / "outside").mkdir()
    for target in (checkout / "runs" / "a", checkout / "untracked", tmp_path / "outside", tmp_path / "new" / "x",
                   checkout / "results" / "mini-quick", checkout / "results" / "mini-quick" / "linear_probe"):
        provenance.require_clean_tree(target, state=dirty)  # no committed results there
    monkeypatch.setenv(provenance.ALLOW_DIRTY_VARIABLE, "1")
    provenance.require_clean_tree(checkout / "results" / "mini", state=dirty)


@pytest.mark.parametrize("command", [
    ["evaluate", "--checkpoint", "missing.pt", "--results-dir", "{results}/mini/linear_probe"],
    ["diagnose", "--checkpoint", "missing.pt", "--results-dir", "{results}/mini/diagnostics"],
    ["sweep", "--run", "missing-run", "--results-dir", "{results}/mini/linear_probe"],
    ["reproduce", "--part", "quick", "--entry", "vicreg:e2mc:0", "--results", "{results}/mini",
     "--runs", "{results}/runs", "--checkpoints", "missing-folder"],
    ["continue", "--config", "configs/mini/vicreg.yaml", "train.init=missing.pt",
     "train.output_dir={results}/mini/run"],
    ["export-base", "--run", "missing-run", "--to", "{results}/mini/checkpoints/x.pt"],
    # an empty folder: were the check broken, these would rewrite the committed files
    ["migrate", "timing", "--results", "{results}/mini/absent"],
    ["migrate", "paths", "--results", "{results}/mini/absent"],
])
def test_commands_refuse_at_start_to_write_committed_results_from_a_dirty_tree(command, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.delenv(provenance.ALLOW_DIRTY_VARIABLE, raising=False)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(provenance, "code_state", lambda: {"commit": "0" * 40, "dirty": True, "diff_sha256": "x"})
    results = ROOT / "results"
    before = sorted(results.rglob("*"))
    assert main([word.format(results=results) for word in command]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refusing to write into results/mini" in err and "E2MC_ALLOW_DIRTY=1" in err
    assert sorted(results.rglob("*")) == before  # nothing written, not even a folder

    # the same command into a folder outside the repository's results is not refused (it fails later,
    # on the missing inputs, or does its work on the empty folder)
    capsys.readouterr()
    main([word.format(results=tmp_path) for word in command])
    assert "refusing" not in capsys.readouterr().err


def test_sweep_refuses_when_the_run_sends_its_results_into_committed_ones(tmp_path, monkeypatch, capsys):
    """Without --results-dir, sweep writes where the run's configuration says (its eval.results_dir)."""
    monkeypatch.delenv(provenance.ALLOW_DIRTY_VARIABLE, raising=False)
    monkeypatch.setattr(provenance, "code_state", lambda: {"commit": "0" * 40, "dirty": True, "diff_sha256": "x"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"eval:\n  results_dir: {ROOT / 'results' / 'mini' / 'absent'}\n")
    assert main(["sweep", "--run", str(run)]) == 2
    assert "refusing to write into results/mini/absent" in capsys.readouterr().err


def test_recorded_commands_name_the_repository_relative_to_it():
    argv = [str(ROOT / "e2mc" / "__main__.py"), "continue", "--config", str(ROOT / "configs/mini/vicreg.yaml"),
            f"train.output_dir={ROOT}/runs/a", "--data-root", "/usr/share/datasets/fashion-mnist"]
    assert provenance.command_line(argv) == ("python -m e2mc continue --config configs/mini/vicreg.yaml "
                                             "train.output_dir=runs/a --data-root /usr/share/datasets/fashion-mnist")



# Config.hash() kept the location fields (LOCATION_FIELDS) until commit 84264b1; files written by code
# older than it carry that hash, computed from the paths as they were before `migrate paths` made
# them relative (the mini grid ran in /work/main). Both definitions are written out here,
# independently of e2mc.config.
HASH_WITHOUT_LOCATIONS = "84264b1"
CHECKOUTS_BEFORE_MIGRATION = ("", "/work/main/")


def _sha16(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _legacy_hashes(config: dict) -> set[str]:
    hashes = set()
    for root in CHECKOUTS_BEFORE_MIGRATION:
        written = json.loads(json.dumps(config))
        for section, key in (("train", "output_dir"), ("eval", "results_dir")):
            if written[section][key] is not None:
                written[section][key] = root + written[section][key]
        hashes.add(_sha16(written))
    return hashes


def test_every_committed_training_result_carries_the_hash_of_the_configuration_it_records():
    from e2mc.config import ADDED_AFTER_FIRST_RESULTS, LOCATION_FIELDS, Config, config_from_dict

    older = set(subprocess.run(["git", "rev-list", f"{HASH_WITHOUT_LOCATIONS}^"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split())
    defaults = Config().to_dict()
    wrong, legacy = [], 0
    for path in sorted((ROOT / "results").rglob("training_*.json")):
        record = json.loads(path.read_text())
        if record.get("kind") != "training" or not record.get("config"):
            continue
        config = config_from_dict(record["config"]).to_dict()
        for section, key in ADDED_AFTER_FIRST_RESULTS:  # absent when the older files were written
            if config[section][key] == defaults[section][key]:
                config[section].pop(key)
        allowed = set()
        if record["provenance"]["git_commit"] in older:
            allowed = _legacy_hashes(config)
            legacy += record["config_hash"] in allowed
        for section, key in LOCATION_FIELDS:
            config[section].pop(key)
        allowed.add(_sha16(config))
        if record["config_hash"] not in allowed:
            wrong.append(str(path.relative_to(ROOT)))
    assert not wrong, f"{len(wrong)} training result(s) whose config_hash is not their config's, e.g. {wrong[:3]}"
    assert legacy == 21  # the ten-epoch mini grid's first 27 runs (results/mini/training), less the six re-run in 2026-12


# Committed records whose code had uncommitted changes, and why each stays (docs/results-schema.md).
# Everything else under results/ names code that can be checked out: `reproduce --rerun-dirty` re-ran the rest.
KEPT_DIRTY = {
    # the mini bases: re-training one makes a new base under every committed result continued from it
    "results/mini/checkpoints/vicreg.json": "base",
    "results/mini/checkpoints/simsiam.json": "base",
    "results/mini-converged/checkpoints/vicreg.json": "base",
    # clean runs whose per-epoch timings `migrate timing` corrected from a dirty checkout
    # (extra.timing_migration); their numbers and the code that trained them are clean
    **{f"results/mini/training/training_{name}.json": "timing migration" for name in (
        "swav_e2mc_sigmoid_fashion_mnist_e010_fna_s1_8bb8a9f9", "swav_mmcr_fashion_mnist_e010_fna_s2_bebb3cba",
        "swav_uniformity_fashion_mnist_e010_fna_s2_1ab54bef", "vicreg_covariance_only_fashion_mnist_e010_fna_s1_737bf640",
        "vicreg_entropy_only_fashion_mnist_e010_fna_s1_9e4ca3a8")},
}


def _dirty_places(record):
    """The places in a record that say its code had uncommitted changes (any ``git_dirty`` true)."""
    return [where[:-len(".git_dirty")] for where, value in _leaves(record)
            if where.endswith(".git_dirty") and value is True]


def test_committed_results_name_code_that_can_be_checked_out():
    tracked = subprocess.run(["git", "ls-files", "-z", "results"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = sorted(p for p in tracked.decode().split("\0") if p.endswith(".json"))
    assert len(paths) > 1000  # the committed results, not an empty listing
    dirty = {p: _dirty_places(json.loads((ROOT / p).read_text())) for p in paths}
    dirty = {p: places for p, places in dirty.items() if places}
    assert sorted(set(dirty) - set(KEPT_DIRTY)) == [], "re-run them: python -m e2mc reproduce --rerun-dirty"
    assert sorted(set(KEPT_DIRTY) - set(dirty)) == []  # a file fixed since: drop it from the list
    migrated = [p for p, why in KEPT_DIRTY.items() if why == "timing migration"]
    assert all(dirty[p] == [".extra.timing_migration.provenance"] for p in migrated)
