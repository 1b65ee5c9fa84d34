"""Result files: schema checks, write -> load round trips, malformed files named in the error."""
import fnmatch
import json
import math
import re
from pathlib import Path

import pytest

from e2mc import results
from e2mc.criteria import criterion_record
from e2mc.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def fields(**changes):
    base = dict(kind="linear_probe", method="vicreg", arm="e2mc",
                criterion={"name": "e2mc", "transform": "sigmoid", "ent_coeff": 10.0, "cov_coeff": 1.0, "params": {}},
                epoch=3, label_fraction=0.01, seed=1, dataset="fashion_mnist",
                metrics={"top1": 71.25, "top5": 97.5, "top1_last": 70.0, "best_epoch": 42},
                extra={"top1_per_epoch": [50.0, 70.0, 71.25]}, config=None, checkpoint="runs/x/checkpoint.pt",
                started="2025-01-02T03:04:05+00:00", finished="2025-01-02T03:05:00+00:00")
    base.update(changes)
    return base


def same(loaded, written):
    """pandas turns a missing value into None or NaN depending on the column's other values."""
    if written is None:
        return loaded is None or (isinstance(loaded, float) and math.isnan(loaded))
    return loaded == written


def test_round_trip_write_then_load_gives_the_written_values(tmp_path):
    cfg = load_config(ROOT / "configs/mini/vicreg.yaml")
    written = [
        fields(config=cfg),
        fields(kind="finetune", arm="original", seed=2, label_fraction=0.1, epoch=10,
               criterion=criterion_record({**cfg.to_dict(), "criterion": {**cfg.to_dict()["criterion"],
                                                                                  "name": "none"}}),
               metrics={"top1": 55.5, "top5": 90.0}, config=cfg.to_dict()),
        fields(kind="diagnostics", label_fraction=None, metrics={"rankme_embedding": 12.5}, checkpoint=None,
               criterion=criterion_record(None), arm="base", epoch=0),
    ]
    for index, f in enumerate(written):
        results.write_result(tmp_path / "sub" / f"r{index}.json", **f)
    table = results.load(tmp_path)

    assert list(table["file"]) == ["sub/r0.json", "sub/r1.json", "sub/r2.json"]
    for (_, row), f in zip(table.iterrows(), written):
        for key in ("kind", "method", "arm", "epoch", "seed", "dataset", "checkpoint", "started", "finished",
                    "label_fraction"):
            assert same(row[key], f[key]), key
        for key, value in f["metrics"].items():
            assert row[key] == value, key
        for key in ("name", "transform", "ent_coeff", "cov_coeff"):
            assert same(row[f"criterion_{key}"], f["criterion"][key]), key
        assert json.loads(row["criterion_params"]) == f["criterion"]["params"]
        assert row["extra"] == f["extra"]
        assert row["provenance_command"] and "provenance_git_commit" in row
    # metrics absent from a file are missing values, not zeros
    assert math.isnan(table.loc[2, "top1"]) and math.isnan(table.loc[0, "rankme_embedding"])
    # the hash is the configuration's own, whether given as a Config or as its dict
    assert table.loc[0, "config_hash"] == cfg.hash() == table.loc[1, "config_hash"]
    assert table.loc[0, "config"] == cfg.to_dict()
    assert same(table.loc[2, "config_hash"], None) and table.loc[2, "config"] == {}


def test_malformed_files_are_named_with_their_problems(tmp_path):
    results.write_result(tmp_path / "good.json", **fields())
    (tmp_path / "truncated.json").write_text('{"schema": "e2mc-result-v1", "kind": ')
    record = json.loads((tmp_path / "good.json").read_text())
    del record["metrics"]
    (tmp_path / "no_metrics.json").write_text(json.dumps(record))
    record = json.loads((tmp_path / "good.json").read_text())
    record["metrics"]["top1"] = "71%"
    record["seed"] = 1.5
    (tmp_path / "text_metric.json").write_text(json.dumps(record))

    with pytest.raises(results.ResultFileError) as error:
        results.load(tmp_path)
    message = str(error.value)
    assert "3 of 4 result file(s)" in message
    assert re.search(r"truncated\.json: not valid JSON", message)
    assert re.search(r"no_metrics\.json: missing field\(s\) metrics", message)
    assert re.search(r"text_metric\.json: .*seed must be an integer.*top1='71%'", message)
    assert "good.json" not in message


def test_write_result_refuses_what_breaks_the_schema(tmp_path):
    with pytest.raises(ValueError, match=r"label_fraction must be null or a number in \(0, 1\], got 2"):
        results.write_result(tmp_path / "x.json", **fields(label_fraction=2))
    with pytest.raises(ValueError, match="kind must be one of"):
        results.write_result(tmp_path / "x.json", **fields(kind="probe"))
    with pytest.raises(ValueError, match="metric name.*epoch.*clash"):
        results.write_result(tmp_path / "x.json", **fields(metrics={"epoch": 3}))
    with pytest.raises(ValueError, match="criterion must be an object with exactly the keys"):
        results.write_result(tmp_path / "x.json", **fields(criterion={"name": "e2mc"}))
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_write_result_fills_schema_provenance_and_times(tmp_path):
    path = results.write_result(tmp_path / "r.json", **fields(started=None, finished=None))
    record = json.loads(path.read_text())
    assert record["schema"] == results.SCHEMA
    assert set(record["provenance"]) >= set(results.PROVENANCE_FIELDS)
    assert record["started"] == record["finished"]
    assert results.validate(record) == []
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_criterion_record_keeps_only_the_fields_in_use():
    cfg = load_config(ROOT / "configs/mini/swav.yaml").to_dict()
    e2mc = criterion_record(cfg)
    assert e2mc == {"name": "e2mc", "transform": cfg["criterion"]["transform"],
                    "ent_coeff": cfg["criterion"]["ent_coeff"], "cov_coeff": cfg["criterion"]["cov_coeff"],
                    "params": {}}
    cfg["criterion"].update(name="uniformity", params={"t": 3.0})
    assert criterion_record(cfg) == {"name": "uniformity", "transform": None, "ent_coeff": None,
                                             "cov_coeff": None, "params": {"t": 3.0}}


def test_file_names_differ_per_evaluation():
    names = {results.result_filename("linear_probe", "swav", "e2mc", "imagenet", epoch, fraction, seed, "abcdef0123")
             for epoch in (0, 10) for fraction in (0.01, 0.1, 1.0) for seed in (0, 1)}
    assert len(names) == 12
    assert results.result_filename("transfer", "vicreg", "e2mc", "cifar10", 3, 0.01, 0, None) == \
        "transfer_vicreg_e2mc_cifar10_e003_f1pct_s0_noconfig.json"


def test_file_name_wildcards_match_every_epoch_and_config_and_nothing_else():
    def name(epoch, seed=0, arm="base"):
        return results.result_filename("linear_probe", "swav", arm, "fashion_mnist", epoch, 0.01, seed, "abcdef0123")
    pattern = results.result_filename("linear_probe", "swav", "base", "fashion_mnist", "*", 0.01, 0, "*")
    assert all(fnmatch.fnmatchcase(name(epoch), pattern) for epoch in (0, 5, 100, 1000))
    assert not fnmatch.fnmatchcase(name(5, seed=1), pattern) and not fnmatch.fnmatchcase(name(5, arm="e2mc"), pattern)


def test_schema_document_describes_every_field():
    text = (ROOT / "docs/results-schema.md").read_text()
    for name in (*results.FIELDS, *results.KINDS, *results.CRITERION_FIELDS, *results.PROVENANCE_FIELDS):
        assert f"`{name}`" in text, name


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        results.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no result files"):
        results.load(tmp_path)
