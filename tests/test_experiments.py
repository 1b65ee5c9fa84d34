"""The experiments of configs/experiments/ expand into exactly the entries the reproduction ran
before they were data (written out here by hand), with the configuration hashes and run folders
pinned from the code that defined them in Python; a malformed experiment file is one line naming
the fix."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from e2mc import experiments
from e2mc.__main__ import main
from e2mc.errors import UserError
from e2mc.methods import get_method, method_names

PAPER = ("vicreg", "swav", "simsiam")
OTHER_TRANSFORM = {"vicreg": "e2mc_gaussian_cdf", "swav": "e2mc_sigmoid", "simsiam": "e2mc_sigmoid"}


def _rest(seed: int) -> list[tuple[str, str, int]]:
    """The full grid's arms after original and E2MC, at one seed: ablations, alternatives, searches."""
    rest = [(m, a, seed) for m in PAPER for a in ("entropy_only", "covariance_only", OTHER_TRANSFORM[m])]
    rest += [("swav", a, seed) for a in ("uniformity", "mmcr", "vc")]
    rest += [("simsiam", "e2mc_cov1", seed), ("simsiam", "e2mc_cov5", seed)]
    return rest + ([("barlowtwins", "e2mc_ent1", 0), ("barlowtwins", "e2mc_ent50", 0)] if seed == 0 else [])


EXPECTED = {
    "quick": [("vicreg", "original", 0), ("vicreg", "e2mc", 0)],
    "full": ([(m, "base", 0) for m in (*PAPER, "barlowtwins")]
             + [(m, a, s) for s in (0, 1, 2) for m in (*PAPER, "barlowtwins") for a in ("original", "e2mc")]
             + [e for s in (0, 1, 2) for e in _rest(s)]),
    "converged": ([("vicreg", "base", 0), ("swav", "base", 0), ("vicreg", "plateau", 0), ("swav", "plateau", 0)]
                  + [(m, a, s) for s in (0, 1, 2) for m in ("vicreg", "swav") for a in ("original", "e2mc")]
                  + [("vicreg", f"{a}-lr{f}x", 0) for f in ("0.3", "3") for a in ("original", "e2mc")]),
    "preregistered": ([("swav", "base", 0)] + [("swav", a, s) for s in range(8) for a in ("original", "e2mc")]
                      + [("swav", "mmcr", s) for s in range(8)]),
}

# (part, method, label, seed) -> (Config.hash(), run folder), from `reproduce` before the experiments were YAML
PINNED = {
    ("full", "vicreg", "e2mc", 0): ("a8cd55e35b7f4fe3", "runs/mini/vicreg/e2mc/seed0"),
    ("full", "vicreg", "e2mc_gaussian_cdf", 2): ("9304e82b657b6460", "runs/mini/vicreg/e2mc_gaussian_cdf/seed2"),
    ("full", "barlowtwins", "e2mc_ent50", 0): ("91f447376782fbcc", "runs/mini/barlowtwins/e2mc_ent50/seed0"),
    ("converged", "vicreg", "e2mc-lr3x", 0): ("88697fae070c8c72", "runs/mini-converged/vicreg/e2mc-lr3x/seed0"),
    ("preregistered", "swav", "e2mc", 5): ("a3869453647c96ef", "runs/mini-converged/swav/e2mc/seed5"),
    ("preregistered", "swav", "mmcr", 7): ("d270b46cbb973538", "runs/mini-converged/swav/mmcr/seed7"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_experiment_expands_into_the_entries_it_ran_before(name, tmp_path):
    # every optional method's base present (full: Barlow Twins), none of the converged part's (SimSiam),
    # whatever this clone holds
    (tmp_path / "barlowtwins.pt").touch()
    part = dataclasses.replace(experiments.load_experiment(name), pretrain_runs=str(tmp_path / "none"),
                               checkpoints=str(tmp_path))
    assert experiments.entries(part) == EXPECTED[name]


@pytest.mark.parametrize("key", sorted(PINNED), ids=lambda k: ":".join(map(str, k)))
def test_entries_keep_their_configuration_hash_and_run_folder(key):
    name, method, label, seed = key
    part = experiments.parts()[name]
    cfg = experiments.entry_config(experiments.find_arm(part, method, label), seed, Path(part.results),
                                   Path(part.runs), part=part)
    assert (cfg.hash(), cfg.train.output_dir) == PINNED[key]


def test_method_groups_come_from_the_registry(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((experiments.EXPERIMENTS / "full.yaml").read_text().replace("methods: paper", "methods: others", 1))
    part = experiments.load_experiment(path)
    assert part.methods == tuple(m for m in method_names() if not get_method(m).in_paper)
    assert experiments.parts()["full"].methods == tuple(m for m in method_names() if get_method(m).in_paper)
    assert {a.method for a in part.grid if a.name == "original"} == set(method_names())


VALID = {"methods": "[vicreg]", "arms": "[{methods: [vicreg], names: [original, e2mc]}]", "seeds": "[0]",
         "epochs": "2", "epoch_fractions": "[0.01]", "checkpoints": "c", "results": "r", "runs": "u",
         "pretrain_hint": "make it"}


@pytest.mark.parametrize("change, fix", [
    ({"epoch": "3"}, "unknown key 'epoch'; did you mean 'epochs'?"),
    ({"methods": "[vicreg, nosuch]"}, "methods must be all, paper, others or a list of registered methods"),
    ({"epoch_fractions": "[0.5]"}, "epoch_fractions must be a list of label fractions of 0.01 0.1 1"),
    ({"seeds": "[]"}, "seeds must be a list of seeds"),
    ({"epochs": "0"}, "epochs must be a number of epochs"),
    ({"arms": "[{methods: [vicreg], names: [e2mc_typo]}]"}, "arms[0].names must be a list of arms of original"),
    ({"arms": "[{methods: [vicreg], custom: [{name: x}]}]"}, "arms[0].custom must be a list of {name: ARM"),
    ({"plateau_every": "5"}, "plateau_every must be null or an integer > 0 (with pretrain_runs)"),
    ({"results": None}, "the key results is missing"),
    ({"extends": "nosuch"}, "extends 'nosuch' names no experiment file beside it"),
])
def test_a_malformed_experiment_is_one_line_naming_the_fix(tmp_path, change, fix):
    keys = {**VALID, **change}
    path = tmp_path / "broken.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in keys.items() if v is not None))
    with pytest.raises(UserError) as caught:
        experiments.load_experiment(path)
    message = str(caught.value)
    assert fix in message and str(path) in message and "\n" not in message


def test_the_valid_file_of_those_tests_loads(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in VALID.items()))
    part = experiments.load_experiment(path)
    assert experiments.entries(part) == [("vicreg", "base", 0), ("vicreg", "original", 0), ("vicreg", "e2mc", 0)]


def test_not_yaml_and_not_a_mapping_and_no_such_experiment_are_one_line(tmp_path):
    for text, fix in (("methods: [vicreg\n", "is not valid YAML"), ("- a\n", "must hold a mapping")):
        path = tmp_path / "x.yaml"
        path.write_text(text)
        with pytest.raises(UserError, match=fix) as caught:
            experiments.load_experiment(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="choose one of converged, full, preregistered, quick"):
        experiments.load_experiment("mini")


def test_a_broken_experiment_file_is_a_one_line_error_of_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.yaml").write_text("".join(f"{k}: {v}\n" for k, v in {**VALID, "seeds": "[a]"}.items()))
    monkeypatch.setattr(experiments, "EXPERIMENTS", tmp_path)
    monkeypatch.setattr(experiments, "_PARTS", {})
    assert main(["reproduce", "--part", "mine", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "mine.yaml: seeds must be a list of seeds (integers >= 0), got ['a']" in error
