"""Paired comparison of two arms: per-seed differences, their t-interval, pairing by seed."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from e2mc.frames import MissingResultsError, paired_difference
from e2mc.tables import Table, paired_comparison


def test_paired_half_width_against_scipy():
    a, b = [70.5, 71.0, 69.3], [70.0, 70.0, 69.0]  # differences 0.5, 1.0, 0.3
    mean, half_width, n = paired_difference(a, b)
    d = np.array([0.5, 1.0, 0.3])
    # by hand: mean 0.6, sample sd sqrt(((-.1)^2 + .4^2 + (-.3)^2) / 2) = sqrt(0.13), sem sqrt(0.13 / 3)
    assert n == 3 and mean == pytest.approx(0.6)
    assert d.std(ddof=1) == pytest.approx(math.sqrt(0.13))
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=math.sqrt(0.13 / 3))
    assert half_width == pytest.approx((high - low) / 2)
    assert half_width == pytest.approx(4.302652729911275 * math.sqrt(0.13 / 3))  # t_{0.975, 2}
    low90, high90 = stats.t.interval(0.9, 2, loc=0.6, scale=math.sqrt(0.13 / 3))
    assert paired_difference(a, b, confidence=0.9)[1] == pytest.approx((high90 - low90) / 2)


def test_paired_difference_edge_cases():
    mean, half_width, n = paired_difference([3.0], [1.0])
    assert (mean, n) == (2.0, 1) and math.isnan(half_width)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])


def results_frame(values, fraction=0.01, dataset="fashion_mnist", method="vicreg"):
    """One linear-probe row per (arm, seed, top1) in ``values``, at epoch 10."""
    return pd.DataFrame([{"kind": "linear_probe", "method": method, "arm": arm, "epoch": 10, "seed": seed,
                          "label_fraction": fraction, "dataset": dataset, "top1": top1,
                          "file": f"{arm}_s{seed}_f{fraction}.json"} for arm, seed, top1 in values])


E2MC = [("e2mc", 0, 70.5), ("e2mc", 1, 71.0), ("e2mc", 2, 69.3)]
ORIGINAL = [("original", 0, 70.0), ("original", 1, 70.0), ("original", 2, 69.0)]


def test_table_holds_the_paired_difference():
    table = paired_comparison(results_frame(E2MC + ORIGINAL))
    assert isinstance(table, Table) and table.name == "paired_comparison"
    (row,) = table.numbers.to_dict("records")
    expected = paired_difference([70.5, 71.0, 69.3], [70.0, 70.0, 69.0])
    assert (row["mean"], row["ci"], row["n"]) == pytest.approx(expected)
    assert row["excludes_zero"] == (0.6 > expected[1]) and row["dropped_seeds"] == 0
    assert table.rows == [["VICReg", "1%", "10", f"+0.60 ± {expected[1]:.2f}", "3",
                           "yes" if row["excludes_zero"] else "no"]]
    assert "no seed dropped" in table.caption
    assert "| VICReg | 1% |" in table.to_markdown() and r"\pm" in table.to_latex()


def test_pairs_by_seed_not_by_order():
    rows = E2MC + ORIGINAL
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    reordered = [rows[i] for i in (2, 0, 1, 3, 5, 4)]  # e2mc seeds 2, 0, 1 beside original seeds 0, 2, 1
    expected = paired_difference([70.5, 71.0, 69.3], [70.0, 70.0, 69.0])
    for frame in (results_frame(shuffled), results_frame(reordered)):
        row = paired_comparison(frame).numbers.iloc[0]
        assert (row["mean"], row["ci"], row["n"]) == pytest.approx(expected)
    # pairing by position instead would give other differences (0.5 - 0 etc.): make sure they differ
    assert paired_difference([69.3, 70.5, 71.0], [70.0, 69.0, 70.0])[1] != pytest.approx(expected[1])


def test_a_seed_in_only_one_arm_is_dropped_and_counted():
    frame = results_frame(E2MC + [("e2mc", 3, 99.0)] + ORIGINAL[:2] + [("original", 4, 0.0)])
    table = paired_comparison(frame)
    row = table.numbers.iloc[0]
    expected = paired_difference([70.5, 71.0], [70.0, 70.0])  # seeds 0 and 1 only
    assert (row["mean"], row["ci"], row["n"]) == pytest.approx(expected)
    assert row["dropped_seeds"] == 3  # e2mc seeds 2 and 3, original seed 4
    assert "3 seeds present in only one arm dropped" in table.caption and "seeds 2, 3, 4" in table.caption


def test_rows_per_method_and_label_fraction_at_the_final_epoch():
    frame = pd.concat([
        results_frame(E2MC + ORIGINAL, fraction=0.01),
        results_frame([("e2mc", s, 80.0 + s) for s in range(3)] + [("original", s, 81.0 + s) for s in range(3)],
                      fraction=0.1),
        results_frame([("e2mc", 0, 50.0), ("original", 0, 40.0)], method="simsiam"),
        # an earlier epoch of the same arms is ignored
        results_frame([("e2mc", 0, 0.0), ("original", 0, 100.0)]).assign(epoch=3),
    ], ignore_index=True)
    table = paired_comparison(frame)
    assert [r[:2] for r in table.rows] == [["VICReg", "1%"], ["VICReg", "10%"], ["SimSiam", "1%"]]
    ten = table.numbers[np.isclose(table.numbers["label_fraction"], 0.1)].iloc[0]
    assert ten["mean"] == pytest.approx(-1.0) and ten["ci"] == pytest.approx(0.0) and ten["n"] == 3
    simsiam = table.rows[2]
    assert simsiam[3] == "+10.00" and simsiam[4] == "1" and simsiam[5] == "—"  # one pair: no interval
    assert table.numbers["epoch"].tolist() == [10, 10, 10]


def test_no_pair_at_all_is_missing_results():
    with pytest.raises(MissingResultsError):
        paired_comparison(results_frame(E2MC + [("original", 7, 1.0)]))
    with pytest.raises(MissingResultsError):
        paired_comparison(results_frame(E2MC))


def test_differences_per_epoch_and_their_figure():
    """Per epoch, E2MC minus original paired on seed (rows shuffled, so order cannot pair them), against
    scipy's t-interval of the differences computed here by hand; the figure draws those numbers."""
    from e2mc import plots
    from e2mc.frames import paired_differences

    rng = np.random.default_rng(0)
    values = {(arm, seed, epoch): 70 + rng.normal() for arm in ("e2mc", "original") for seed in range(3)
              for epoch in range(4)}
    values[("e2mc", 3, 2)] = 99.0  # a seed without its pair: dropped at that epoch only
    frame = pd.concat([results_frame([(arm, seed, top1)]).assign(epoch=epoch)
                       for (arm, seed, epoch), top1 in values.items()], ignore_index=True)
    frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    differences = paired_differences(frame, "e2mc", "original", "top1", ["method", "epoch"])
    assert differences["epoch"].tolist() == [0, 1, 2, 3]
    for _, row in differences.iterrows():
        d = np.array([values[("e2mc", s, row["epoch"])] - values[("original", s, row["epoch"])] for s in range(3)])
        low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(3))
        assert row["mean"] == pytest.approx(d.mean()) and row["ci"] == pytest.approx((high - low) / 2)
        assert row["n"] == 3 and row["dropped_seeds"] == ([3] if row["epoch"] == 2 else [])

    figure = plots.paired_difference_epochs(frame, metric="top1")
    line = figure.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 1, 2, 3]
    assert np.allclose(line.get_ydata(), differences["mean"])
    with pytest.raises(MissingResultsError, match="both e2mc and original"):
        plots.paired_difference_epochs(frame[frame.arm == "e2mc"])


def test_tables_lead_with_the_unselected_probe_and_name_each_rule():
    """With top1_last recorded, the main and paired tables of all_tables show it first, the best test epoch
    beside it, each column and the caption naming its selection rule; numbers are per-metric paired means."""
    from e2mc.frames import lead_metrics
    from e2mc.tables import all_tables

    frame = results_frame(E2MC + ORIGINAL)
    frame["top1_last"] = frame["top1"] - [0.0, 0.5, 1.0, 0.2, 0.2, 0.2]
    assert lead_metrics(frame) == ("top1_last", "top1")
    assert lead_metrics(frame.drop(columns="top1_last")) == ("top1",)
    made, _ = all_tables(frame)
    paired = next(t for t in made if t.name == "paired_comparison")
    assert paired.header == ["Method", "Labels", "Epoch", "Δ last epoch", "excludes 0 (last epoch)",
                             "Δ best epoch", "excludes 0 (best epoch)", "Seeds"]
    last = paired.numbers[paired.numbers["metric"] == "top1_last"].iloc[0]
    expected = paired_difference([70.5, 70.5, 68.3], [69.8, 69.8, 68.8])
    assert (last["mean"], last["ci"], last["n"]) == pytest.approx(expected)
    assert paired.rows[0][3] == f"{expected[0]:+.2f} ± {expected[1]:.2f}" and paired.rows[0][-1] == "3"
    assert "last epoch: at the probe's last epoch, no selection" in paired.caption
    assert "best epoch: at the probe's best test epoch, the authors' protocol, optimistic" in paired.caption
    main = next(t for t in made if t.name == "main_results")
    assert main.header[3:5] == ["1% last epoch", "1% best epoch"]
    e2mc_row = next(row for row in main.rows if row[1] == "E2MC")
    assert e2mc_row[3] == f"{np.mean([70.5, 70.5, 68.3]):.2f} ± " + \
        f"{stats.t.ppf(0.975, 2) * np.std([70.5, 70.5, 68.3], ddof=1) / math.sqrt(3):.2f}"
