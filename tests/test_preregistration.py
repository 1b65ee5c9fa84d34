"""The pre-registered analysis (e2mc.preregistration) against scipy, a simulation, and hand-built frames."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from e2mc import preregistration as prereg
from e2mc.frames import MissingResultsError
from e2mc.experiments import entries, entry_config, find_arm, parts


def test_paired_t_test_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(78, 0.5, 8), rng.normal(77.8, 0.5, 8)
    result = prereg.paired_t_test(a - b)
    reference = stats.ttest_rel(a, b)
    assert result.t == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-10)
    low, high = stats.t.interval(0.95, 7, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert result.interval == pytest.approx((low, high), rel=1e-10)
    assert result.df == 7 and result.n == 8


def test_paired_t_test_refuses_too_few_and_handles_constant_differences():
    with pytest.raises(ValueError, match="at least two"):
        prereg.paired_t_test([0.3])
    constant = prereg.paired_t_test([0.5, 0.5, 0.5])  # exact in binary: sd exactly 0
    assert constant.p == 0.0 and constant.t == np.inf and constant.half_width == 0.0


def test_power_agrees_with_a_simulation():
    sd, n, effect = 0.26, 8, 0.30
    rng = np.random.default_rng(0)
    d = rng.normal(effect, sd, size=(40000, n))
    rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    # binomial sd of the simulated rate is about 0.002
    assert prereg.power(effect, sd, n) == pytest.approx(rejected.mean(), abs=0.01)
    assert prereg.power(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)  # size of the test


def test_minimum_detectable_effect_has_the_target_power():
    effect = prereg.minimum_detectable_effect(0.26, 8)
    assert prereg.power(effect, 0.26, 8) == pytest.approx(0.80, abs=1e-6)
    assert prereg.minimum_detectable_effect(0.26, 16) < effect  # more pairs detect less
    assert prereg.minimum_detectable_effect(0.52, 8) == pytest.approx(2 * effect, rel=1e-6)  # scales with sd


def test_power_analysis_sd_bound_is_a_chi_square_quantile():
    analysis = prereg.power_analysis([0.11, -0.01, 0.49])
    assert analysis.pilot_sd == pytest.approx(np.std([0.11, -0.01, 0.49], ddof=1))
    # P(sigma <= bound) = 0.8 under (n-1) s^2 / sigma^2 ~ chi2(n-1)
    assert stats.chi2.sf(2 * analysis.pilot_sd ** 2 / analysis.sd_upper ** 2, 2) == pytest.approx(0.8)
    assert analysis.detectable_at_sd_upper > analysis.detectable


def _frame(values: dict[str, list[float]], epoch: int = 20, metric: str = "top1_last", seeds=None) -> pd.DataFrame:
    rows = []
    for arm, per_seed in values.items():
        for seed, value in zip(seeds or range(len(per_seed)), per_seed):
            rows.append({"kind": "linear_probe", "method": "swav", "arm": arm, "seed": seed, "epoch": epoch,
                         "label_fraction": 0.01, metric: value, "file": f"{arm}_s{seed}.json"})
    frame = pd.DataFrame(rows)
    frame.attrs["results_dir"] = "fake"
    return frame


def test_paired_values_pair_on_seed_not_order():
    original = [70.0 + s for s in range(8)]
    e2mc = [70.5 + s for s in range(8)]
    frame = _frame({"original": original, "e2mc": e2mc})
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled.attrs = frame.attrs
    values = prereg.paired_values(shuffled, prereg.PRIMARY)
    assert values["difference"].tolist() == pytest.approx([0.5] * 8)
    assert values["seed"].tolist() == list(range(8))


def test_the_primary_endpoint_refuses_missing_seeds_and_other_epochs():
    frame = _frame({"original": [70.0] * 5, "e2mc": [71.0] * 5})
    with pytest.raises(MissingResultsError, match=r"lacks seeds \[5, 6, 7\]"):
        prereg.evaluate_endpoint(frame, prereg.PRIMARY)
    at_ten = _frame({"original": [70.0] * 8, "e2mc": [71.0] * 8}, epoch=10)
    with pytest.raises(MissingResultsError):
        prereg.evaluate_endpoint(at_ten, prereg.PRIMARY)


def test_analyse_and_its_sentences():
    rng = np.random.default_rng(5)
    base = rng.normal(78, 0.3, 8)
    frame = _frame({"original": list(base), "e2mc": list(base + rng.normal(0.05, 0.2, 8)),
                    "mmcr": list(base + 1.0 + rng.normal(0, 0.2, 8))})
    outcome = prereg.analyse(frame)
    assert outcome.primary.n == 8 and outcome.control.n == 8
    assert outcome.control.significant and outcome.control.mean > 0
    text = prereg.primary_sentence(outcome.primary)
    assert f"{outcome.primary.mean:+.2f} points" in text and "n = 8" in text
    assert ("does not reject" in text) == (not outcome.primary.significant)
    assert "detects a gain" in prereg.control_sentence(outcome.control)


def test_the_preregistered_part_reuses_the_converged_entries():
    """Seeds 0-2 of original and E2MC are the converged part's entries (same configuration hash), so
    the study takes them up rather than re-running them; MMCR comes after every primary seed."""
    from pathlib import Path
    converged, preregistered = parts()["converged"], parts()["preregistered"]
    for arm_name in ("original", "e2mc"):
        for seed in (0, 1, 2):
            ours = entry_config(find_arm(preregistered, "swav", arm_name), seed, Path("results/x"), Path("runs/x"),
                                part=preregistered)
            theirs = entry_config(find_arm(converged, "swav", arm_name), seed, Path("results/x"), Path("runs/x"),
                                  part=converged)
            assert ours.hash() == theirs.hash()
    order = entries(preregistered)
    assert order[0] == ("swav", "base", 0)
    arms = [label for _, label, _ in order[1:]]
    assert arms[:16] == ["original", "e2mc"] * 8 and arms[16:] == ["mmcr"] * 8
    assert prereg.SEEDS == preregistered.seeds


def _complete_frame(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for arm, shift in (("original", 0.0), ("e2mc", 0.1), ("mmcr", 0.8)):
        for s in range(8):
            for fraction in (0.01, 0.1, 1.0):
                value = 78 + shift + rng.normal(0, 0.2)
                rows.append({"kind": "linear_probe", "method": "swav", "arm": arm, "seed": s, "epoch": 20,
                             "label_fraction": fraction, "top1_last": value, "top1": value + 0.3,
                             "top1_val_selected": value - rng.uniform(0, 0.5), "file": f"{arm}{s}"})
    frame = pd.DataFrame(rows)
    frame.attrs["results_dir"] = "synthetic"
    return frame


def test_the_report_table_holds_the_tests_it_prints():
    from e2mc import converged_tables
    frame = _complete_frame()
    table = converged_tables.preregistered_study(frame)
    first = table.numbers.iloc[0]
    assert (first["role"], first["metric"], first["label_fraction"]) == ("primary", "top1_last", 0.01)
    e2mc = frame[(frame.arm == "e2mc") & (frame.label_fraction == 0.01)].sort_values("seed")["top1_last"].to_numpy()
    original = frame[(frame.arm == "original") & (frame.label_fraction == 0.01)].sort_values("seed")["top1_last"]
    reference = stats.ttest_rel(e2mc, original.to_numpy())
    assert first["t"] == pytest.approx(reference.statistic) and first["p"] == pytest.approx(reference.pvalue)
    assert table.numbers.iloc[1]["role"] == "positive control" and table.numbers.iloc[1]["arm"] == "mmcr"
    assert set(table.numbers.iloc[2:]["role"]) == {"exploratory"} and len(table.numbers) == 2 + len(prereg.EXPLORATORY)
    assert table.rows[0][4].startswith(f"{first['mean']:+.2f} [")
    # the Markdown (what the README shows) ends with the fixed sentences, the primary's t and p among them
    markdown = table.to_markdown()
    assert markdown.index("| primary |") < markdown.index("On the converged mini SwAV base")
    assert f"t(7) = {reference.statistic:.2f}, p = {reference.pvalue:.3f}" in markdown
    assert "Positive control, MMCR minus the original loss" in markdown and "\\caption" not in markdown


def test_the_report_figure_draws_each_seed(tmp_path):
    from e2mc import converged_plots, figure_style
    figure = converged_plots.preregistered_study(_complete_frame())
    dots = [collection for collection in figure.axes[0].collections if collection.get_offsets().shape[0] == 8]
    assert len(dots) == 2  # one cloud of eight per comparison
    paths = figure_style.save_figure(figure, tmp_path, "preregistered_study", ("png",))
    assert paths[0].stat().st_size > 0


def test_progress_counts_seeds_per_arm():
    frame = _complete_frame()
    partial = frame[~((frame.arm == "mmcr") & (frame.seed >= 5))]
    assert prereg.progress(partial)["mmcr"] == [0, 1, 2, 3, 4]
    assert "mmcr: 5 of 8 (0, 1, 2, 3, 4)" in prereg.progress_sentence(partial)
