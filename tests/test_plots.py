"""Figures and tables from result files, checked against numbers computed here from the raw JSON of
tests/fixtures/results_small/ with scipy.stats.t (not through e2mc.tables' own statistics)."""
import copy
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from e2mc import frames, naming
from e2mc import figure_style, notebook_io, plots, tables
from e2mc.results import ResultFileError, validate

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results_small"


@pytest.fixture(scope="module")
def frame():
    return notebook_io.load_results(FIXTURE)


@pytest.fixture(scope="module")
def records():
    return [json.loads(p.read_text()) for p in sorted(FIXTURE.rglob("*.json"))]


def expected(values, confidence=0.95):
    """Mean and CI half-width the textbook way: scipy's t interval around the mean."""
    values = np.asarray(values, dtype=float)
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return values.mean(), (high - low) / 2


def probes(records, method, arm, epoch, fraction, metric="top1"):
    return [r["metrics"][metric] for r in records if r["kind"] == "linear_probe" and r["method"] == method
            and r["arm"] == arm and r["epoch"] == epoch and math.isclose(r["label_fraction"], fraction)]


def assert_png(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 200
    return Image.open(path).size


def assert_pdf(path: Path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") + data.count(b"/Type /Page>") >= 1


def assert_same_json(a, b, atol=1e-4):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_json(a[key], b[key], atol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_json(x, y, atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=atol)
    else:
        assert a == b


# --- fixture ------------------------------------------------------------------------------------

def test_fixture_is_the_output_of_its_script_and_follows_the_schema(tmp_path, records):
    spec = importlib.util.spec_from_file_location("make_results_small", FIXTURE.parent / "make_results_small.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    regenerated = make.main(tmp_path / "results_small")
    committed = sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("*.json"))
    assert committed == sorted(p.relative_to(regenerated) for p in regenerated.rglob("*.json"))
    for path in committed:  # equal up to the last rounded digit (BLAS may differ between machines)
        assert_same_json(json.loads((FIXTURE / path).read_text()), json.loads((regenerated / path).read_text()))
    assert all(validate(r) == [] for r in records)
    assert {(r["kind"]) for r in records} == {"linear_probe", "diagnostics", "training"}


# --- statistics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values,confidence", [([1.0, 2.0], 0.95), ([60.1, 61.7, 59.9, 60.4], 0.95),
                                               ([3.0, 3.5, 2.0, 4.0, 3.3], 0.9)])
def test_mean_ci_matches_scipy_t_interval(values, confidence):
    mean, half_width, n = frames.mean_ci(values, confidence)
    ref_mean, ref_half_width = expected(values, confidence)
    assert n == len(values)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert half_width == pytest.approx(ref_half_width, rel=1e-10)


def test_mean_ci_edge_cases():
    mean, half_width, n = frames.mean_ci([72.5])
    assert (mean, n) == (72.5, 1) and math.isnan(half_width)
    assert frames.mean_ci([2.0, 2.0, 2.0])[1] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        frames.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        frames.mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        frames.mean_ci([1.0, 2.0], confidence=95)


def test_summarize_keeps_null_keys_as_their_own_group():
    frame = pd.DataFrame({"label_fraction": [0.01, 0.01, None, None], "seed": [0, 1, 0, 1],
                          "top1": [1.0, 3.0, 10.0, 14.0]})
    summary = frames.summarize(frame, ["label_fraction"], "top1")
    assert len(summary) == 2
    null_row = summary[summary["label_fraction"].isna()].iloc[0]
    assert null_row["mean"] == 12.0 and null_row["n"] == 2
    assert null_row["ci"] == pytest.approx(expected([10.0, 14.0])[1])


def test_summarize_refuses_two_results_of_one_seed():
    frame = pd.DataFrame({"arm": ["e2mc"] * 3, "seed": [0, 1, 1], "top1": [1.0, 2.0, 3.0],
                          "file": ["a_s0_11.json", "a_s1_11.json", "a_s1_22.json"]})
    with pytest.raises(frames.DuplicateResultsError, match=r"more than one result per seed.*a_s1_11.json.*a_s1_22.json"):
        frames.summarize(frame, ["arm"], "top1")
    assert frames.summarize(frame.iloc[:2], ["arm"], "top1")["n"].item() == 2


def test_two_training_runs_probed_with_one_seed_are_told_to_tie_the_probe_seed():
    """Seeds 0 and 1 of a run each probed with probe seed 0 (eval_linear.sh before the fix): the advice is to
    probe each run with its training seed, not "one configuration per folder" (it is one configuration)."""
    frame = pd.DataFrame({"arm": ["e2mc"] * 2, "seed": [0, 0], "top1": [1.0, 2.0], "file": ["a.json", "b.json"],
                          "checkpoint": ["runs/e2mc/seed0/checkpoint.pt", "runs/e2mc/seed1/checkpoint.pt"]})
    advice = r"different training runs.*eval.seeds=\[<train.seed>\]"
    with pytest.raises(frames.DuplicateResultsError, match=advice):
        frames.summarize(frame, ["arm"], "top1")
    with pytest.raises(frames.DuplicateResultsError, match="keep one configuration per results folder"):
        frames.summarize(frame.assign(checkpoint="runs/e2mc/seed0/checkpoint.pt"), ["arm"], "top1")


# --- Fig. 2 reference distributions -------------------------------------------------------------

@pytest.mark.parametrize("sampler", [plots.sample_uniform_2d, plots.sample_x_distribution])
def test_reference_samples_have_uniform_marginals_and_zero_covariance(sampler):
    n = 20_000
    points = sampler(n, seed=3)
    assert points.shape == (n, 2) and points.min() >= 0 and points.max() <= 1
    for column in points.T:
        assert stats.kstest(column, "uniform").pvalue > 0.01
    # sample covariance of independent-ish U(0,1) pairs has standard deviation (1/12) / sqrt(n)
    assert abs(np.cov(points.T)[0, 1]) < 4 * (1 / 12) / math.sqrt(n)
    assert np.array_equal(points, sampler(n, seed=3)) and not np.array_equal(points, sampler(n, seed=4))


def test_x_distribution_lies_on_the_diagonals_and_uniform_does_not():
    x_points = plots.sample_x_distribution(5000, seed=0)
    np.testing.assert_allclose(np.abs(x_points[:, 0] - 0.5), np.abs(x_points[:, 1] - 0.5), atol=1e-12)
    assert 0.45 < np.mean(np.isclose(x_points[:, 0], x_points[:, 1])) < 0.55  # both diagonals populated
    uniform = plots.sample_uniform_2d(5000, seed=0)
    assert np.mean(np.abs(np.abs(uniform[:, 0] - 0.5) - np.abs(uniform[:, 1] - 0.5)) < 1e-3) < 0.01


def test_position_colors_follow_ranks_to_the_corners():
    c00, c10, c01, c11 = plots.POSITION_CORNERS
    np.testing.assert_allclose(plots.position_colors(np.array([[0.1, 0.2], [0.7, 0.9]])), [c00, c11])
    np.testing.assert_allclose(plots.position_colors(np.array([[0.1, 0.9], [0.7, 0.2]])), [c01, c10])
    # ranks, not values: the middle point of three sits at (1/2, 1/2), the mean of the four corners
    middle = plots.position_colors(np.array([[0.0, 0.0], [0.01, 0.02], [1.0, 1.0]]))[1]
    np.testing.assert_allclose(middle, plots.POSITION_CORNERS.mean(axis=0))
    with pytest.raises(ValueError, match="points"):
        plots.position_colors(np.zeros((5, 3)))


# --- arm styles ---------------------------------------------------------------------------------

def test_every_arm_has_one_distinct_colour_label_and_marker():
    named = naming.ARM_STYLES
    assert len({(st.color, st.marker) for st in named.values()}) == len(named)
    assert len({st.label for st in named.values()}) == len(named)
    # the mini grid's arms without a fixed style (SimSiam's λ_cov and Barlow Twins' λ_ent variants used to
    # share one purple): in one figure no two arms share a colour and a marker, nor look like a named arm
    arms = list(named) + ["some_new_arm", "e2mc_cov1", "e2mc_cov5", "e2mc_ent1", "e2mc_ent50"]
    styles = naming.arm_styles(arms)
    assert list(styles) == arms
    looks = [(st.color.lower(), st.marker) for st in styles.values()]
    assert len(set(looks)) == len(looks)
    colours = [st.color.lower() for st in styles.values()]
    assert len(set(colours)) == len(colours)  # up to six unnamed arms even differ in colour alone
    many = naming.arm_styles([f"arm{i}" for i in range(36)])
    assert len({(st.color, st.marker) for st in many.values()}) == 36
    with pytest.raises(ValueError, match="ARM_STYLES"):
        naming.arm_styles([f"arm{i}" for i in range(37)])
    assert naming.arm_styles(["e2mc_cov5", "e2mc_cov1"]) == naming.arm_styles(["e2mc_cov1", "e2mc_cov5"])
    assert naming.arm_label("some_new_arm") == "some_new_arm"
    assert naming.arm_label("e2mc_cov5") == "E2MC (λ_cov 5)" == styles["e2mc_cov5"].label
    assert naming.arm_label("entropy_only_gaussian_cdf_ent2") == "entropy only (Gaussian CDF, λ_ent 2)"
    assert naming.arm_label("e2mc") == named["e2mc"].label


def test_committed_figures_arms_are_told_apart():
    """Every arm of the committed mini grid, styled together as a figure of it is, looks unique."""
    arms = ["base", "original", "e2mc", "entropy_only", "covariance_only", "e2mc_sigmoid", "e2mc_gaussian_cdf",
            "uniformity", "mmcr", "vc", "e2mc_cov1", "e2mc_cov5", "e2mc_ent1", "e2mc_ent50"]
    looks = [(st.color, st.marker) for st in naming.arm_styles(arms).values()]
    assert len(set(looks)) == len(arms)


# --- Fig. 6 -------------------------------------------------------------------------------------

def test_fig6_shows_the_papers_arms_and_says_what_its_bands_are(frame):
    """Fig. 6 as in the paper: base, original loss and E2MC only; the ablations and alternatives in their
    own figures; the figure names the probe number and the band; a one-seed arm says so."""
    fig = plots.fig6_epochs(frame)
    labels = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert labels == {naming.arm_label(a) for a in naming.MAIN_ARMS}
    note = fig._suptitle.get_text()
    assert "best test epoch" in note and "95% t-interval over 2 seeds (unpaired)" in note
    assert fig.axes[0].get_ylabel() == "linear-probe top-1 (%), 1% labels\nbest epoch"
    ablations = plots.fig6_epochs(frame, arms=plots.fig6_group_arms(frame, "ablations"))
    ablation_labels = {line.get_label() for ax in ablations.axes for line in ax.lines}
    assert naming.arm_label("entropy_only") in ablation_labels and "uniformity" not in ablation_labels
    probed = frame[frame["kind"] == "linear_probe"]
    with_alternatives = set(probed.loc[probed["arm"].isin(["uniformity", "mmcr", "vc"]), "method"])
    alternatives = plots.fig6_epochs(frame, arms=plots.fig6_group_arms(frame, "alternatives"))
    assert [ax.get_title() for ax in alternatives.axes] == [naming.method_label(m) for m in ("vicreg", "swav")
                                                            if m in with_alternatives]
    one_seed = frame[~((frame["arm"] == "uniformity") & (frame["seed"] == 1))]
    alternatives = plots.fig6_epochs(one_seed, arms=plots.fig6_group_arms(frame, "alternatives"))
    assert "uniformity (1 seed)" in {line.get_label() for line in alternatives.axes[0].lines}


def test_fig6_lines_are_seed_means_and_start_at_the_base(frame, records, tmp_path):
    fig = plots.fig6_epochs(frame, arms=None)
    vicreg_axes, swav_axes = fig.axes[:2]
    assert vicreg_axes.get_title() == "VICReg" and swav_axes.get_title() == "SwAV"
    line = next(line for line in vicreg_axes.lines if line.get_label() == naming.arm_label("e2mc"))
    base = np.mean(probes(records, "vicreg", "base", 0, 0.01))
    means = [base] + [np.mean(probes(records, "vicreg", "e2mc", e, 0.01)) for e in (1, 2, 3)]
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), means, rtol=1e-12)
    labels = {line.get_label() for line in swav_axes.lines}
    assert {naming.arm_label(a) for a in ("base", "original", "e2mc", "entropy_only", "covariance_only",
                                          "uniformity")} <= labels
    assert line.get_color().lower() == naming.ARM_STYLES["e2mc"].color.lower()
    paths = figure_style.save_figure(fig, tmp_path, "fig6_epochs")
    assert [p.name for p in paths] == ["fig6_epochs.png", "fig6_epochs.pdf"]
    width, height = assert_png(paths[0])
    assert width > height  # two panels side by side
    assert_pdf(paths[1])


def test_epoch_curves_band_is_the_t_interval(frame, records):
    curves = plots.epoch_curves(frame)
    row = curves[(curves["method"] == "swav") & (curves["arm"] == "uniformity") & (curves["epoch"] == 2)].iloc[0]
    mean, half_width = expected(probes(records, "swav", "uniformity", 2, 0.01))
    assert (row["mean"], row["ci"], row["n"]) == (pytest.approx(mean), pytest.approx(half_width), 2)


def test_fig6_names_the_directory_when_the_fraction_is_missing(frame):
    with pytest.raises(frames.MissingResultsError,
                       match=f"no linear_probe results with label_fraction 0.5 in {FIXTURE}; run make reproduce"):
        plots.fig6_epochs(frame, label_fraction=0.5)
    with pytest.raises(frames.MissingResultsError, match="column.*'top3'"):
        plots.fig6_epochs(frame, metric="top3")


# --- Fig. 2 -------------------------------------------------------------------------------------

def _diagnostics(records, arm):
    return next(r for r in records if r["kind"] == "diagnostics" and r["arm"] == arm)


def test_fig2_panels_show_the_stored_samples_matched_by_image(frame, records, tmp_path):
    before, after = _diagnostics(records, "base"), _diagnostics(records, "e2mc")
    # shuffle the images of the "after" result: the figure must match points by image index, not by order
    shuffled = frame.copy()
    row = shuffled.index[(shuffled["kind"] == "diagnostics") & (shuffled["arm"] == "e2mc")][0]
    order = np.random.default_rng(0).permutation(len(after["extra"]["image_indices"]))
    extra = copy.deepcopy(after["extra"])
    extra["image_indices"] = [after["extra"]["image_indices"][k] for k in order]
    extra["coordinates"] = {t: [[pair[k] for k in order] for pair in coordinates]
                            for t, coordinates in after["extra"]["coordinates"].items()}
    shuffled.at[row, "extra"] = extra

    for transform, name in ((None, "sigmoid"), ("gaussian_cdf", "Gaussian CDF")):
        stored = transform or before["extra"]["method_transform"]
        fig = plots.fig2_marginals(shuffled, pair=1, transform=transform)
        panels = [ax.collections[0] for ax in fig.axes[:4]]
        n = len(before["extra"]["image_indices"])
        np.testing.assert_allclose(panels[0].get_offsets(), plots.sample_uniform_2d(n, 0))
        np.testing.assert_allclose(panels[1].get_offsets(), plots.sample_x_distribution(n, 1))
        np.testing.assert_allclose(panels[2].get_offsets(), before["extra"]["coordinates"][stored][1])
        np.testing.assert_allclose(panels[3].get_offsets(), after["extra"]["coordinates"][stored][1])  # base order
        np.testing.assert_allclose(panels[2].get_facecolors(), panels[3].get_facecolors())  # colour: position before
        i, j = before["extra"]["dimension_pairs"][1]
        assert fig.axes[2].get_xlabel() == f"{name} of dimension {i}"
        assert fig.axes[2].get_ylabel() == f"{name} of dimension {j}"
        top, right = fig.axes[3].child_axes
        assert "after 3 epochs" in top.get_title()
        # the edges: each coordinate's histogram, and its m-spacings entropy written the textbook way
        points = np.asarray(after["extra"]["coordinates"][stored][1])
        assert sum(p.get_height() for p in top.patches) == len(points)
        for axis, edge in ((0, top), (1, right)):
            x = np.sort(points[:, axis])
            m = round(math.sqrt(len(x)))
            entropy = np.mean(np.log((len(x) + 1) / m * (x[m:] - x[:-m]) + 1e-7))
            assert edge.texts[0].get_text() == f"H = {entropy:.2f} nats"
        assert len(set(map(tuple, panels[0].get_facecolors()))) == 1  # (a): one colour, no key without meaning
    paths = figure_style.save_figure(fig, tmp_path, "fig2", ["png", "pdf", "svg"])
    assert_png(paths[0])
    assert_pdf(paths[1])
    assert paths[2].read_text().lstrip().startswith("<?xml")


def test_fig2_takes_the_start_from_the_arm_at_epoch_0_when_there_is_no_base(frame):
    relabelled = frame.copy()
    relabelled.loc[(relabelled["kind"] == "diagnostics") & (relabelled["arm"] == "base"), "arm"] = "e2mc"
    reference_fig = plots.fig2_marginals(frame)
    fig = plots.fig2_marginals(relabelled)
    for k in (2, 3):
        np.testing.assert_allclose(fig.axes[k].collections[0].get_offsets(),
                                   reference_fig.axes[k].collections[0].get_offsets())


def test_fig2_errors_name_what_is_missing(frame):
    with pytest.raises(frames.MissingResultsError, match=f"no diagnostics results with method 'swav'.* in {FIXTURE}"):
        plots.fig2_marginals(frame, method="swav")
    with pytest.raises(ValueError, match="pair=7 but the vicreg base diagnostics .* hold 2 pairs"):
        plots.fig2_marginals(frame, pair=7)
    with pytest.raises(frames.MissingResultsError, match="no coordinates for transform 'tanh'"):
        plots.fig2_marginals(frame, transform="tanh")
    broken = frame.copy()
    row = broken.index[(broken["kind"] == "diagnostics") & (broken["arm"] == "e2mc")][0]
    extra = copy.deepcopy(broken.at[row, "extra"])
    extra["coordinates"]["sigmoid"] = extra["coordinates"]["sigmoid"][:1]
    broken.at[row, "extra"] = extra
    with pytest.raises(frames.MissingResultsError, match=r"malformed: dimension_pairs \(2, 2\) .* \(1, 200, 2\)"):
        plots.fig2_marginals(broken)
    extra.pop("coordinates")
    with pytest.raises(frames.MissingResultsError, match="lacks extra"):
        plots.fig2_marginals(broken)


# --- tables -------------------------------------------------------------------------------------

def test_main_results_cells_are_final_epoch_means_with_t_intervals(frame, records):
    table = tables.main_results(frame)
    assert table.header == ["Method", "Arm", "Epoch", "1%", "10%"]
    assert [row[:3] for row in table.rows] == [
        ["VICReg", "base checkpoint", "0"], ["VICReg", "original loss", "3"], ["VICReg", "E2MC", "3"],
        ["SwAV", "base checkpoint", "0"], ["SwAV", "original loss", "3"], ["SwAV", "E2MC", "3"]]
    for method, method_label in (("vicreg", "VICReg"), ("swav", "SwAV")):
        for arm, epoch in (("base", 0), ("original", 3), ("e2mc", 3)):
            row = next(r for r in table.rows if r[0] == method_label and r[1] == naming.arm_label(arm))
            for column, fraction in ((3, 0.01), (4, 0.1)):
                mean, half_width = expected(probes(records, method, arm, epoch, fraction))
                assert row[column] == f"{mean:.2f} ± {half_width:.2f}"
                cell = table.numbers[(table.numbers["method"] == method) & (table.numbers["arm"] == arm)
                                     & np.isclose(table.numbers["label_fraction"], fraction)].iloc[0]
                assert cell["mean"] == pytest.approx(mean) and cell["ci"] == pytest.approx(half_width)
                assert cell["n"] == 2 and cell["epoch"] == epoch


def test_base_stands_in_from_one_arm_at_epoch_0(frame, records):
    """Without "base" results, the epoch-0 results the per-epoch evaluation writes under each arm's name
    stand for the base: those of "original" (not also e2mc's, which would count the checkpoint twice)."""
    probes_only = frame[frame["kind"] == "linear_probe"]
    base = probes_only[probes_only["arm"] == "base"]
    as_original = base.assign(arm="original")
    as_e2mc = base.assign(arm="e2mc", top1=base["top1"] + 100)  # distinguishable
    relabelled = pd.concat([probes_only[probes_only["arm"] != "base"], as_original, as_e2mc], ignore_index=True)
    relabelled.attrs["results_dir"] = "results/x"
    table = tables.main_results(relabelled)
    row = next(r for r in table.rows if r[:2] == ["SwAV", "base checkpoint"])
    mean, half_width = expected(probes(records, "swav", "base", 0, 0.1))
    assert row[2:] == ["0", f"{np.mean(probes(records, 'swav', 'base', 0, 0.01)):.2f} ± "
                            f"{expected(probes(records, 'swav', 'base', 0, 0.01))[1]:.2f}",
                       f"{mean:.2f} ± {half_width:.2f}"]
    curves = plots.epoch_curves(relabelled)
    e2mc_start = curves[(curves["method"] == "swav") & (curves["arm"] == "e2mc") & (curves["epoch"] == 0)]
    assert e2mc_start["mean"].item() == pytest.approx(np.mean(probes(records, "swav", "base", 0, 0.01)) + 100)
    fig = plots.fig6_epochs(relabelled)
    assert naming.arm_label("base") in {line.get_label() for line in fig.axes[1].lines}


def test_transfer_table_has_one_column_per_dataset(frame, records):
    """Transfer results have no label fraction and several datasets: each dataset is its own column."""
    final = frame[(frame["kind"] == "linear_probe") & np.isclose(frame["label_fraction"], 0.1)]
    transfer = pd.concat([final.assign(kind="transfer", label_fraction=None, dataset="cifar10"),
                          final.assign(kind="transfer", label_fraction=None, dataset="inaturalist2018",
                                       top1=final["top1"] / 2)], ignore_index=True)
    table = tables.main_results(transfer, kind="transfer")
    assert table.name == "main_results_transfer"
    assert table.header == ["Method", "Arm", "Epoch", "cifar10 all", "inaturalist2018 all"]
    row = next(r for r in table.rows if r[:2] == ["VICReg", "E2MC"])
    values = probes(records, "vicreg", "e2mc", 3, 0.1)
    mean, half_width = expected(values)
    half_mean, half_half_width = expected(np.array(values) / 2)
    assert row[2:] == ["3", f"{mean:.2f} ± {half_width:.2f}", f"{half_mean:.2f} ± {half_half_width:.2f}"]


def test_ablation_and_alternative_tables_pick_their_arms(frame, records):
    ablation = tables.ablations(frame)
    arms = [(row[0], row[1]) for row in ablation.rows]
    assert arms == [(m, naming.arm_label(a)) for m in ("VICReg", "SwAV") for a in ("e2mc", "entropy_only",
                                                                                    "covariance_only")]
    entropy_only = next(row for row in ablation.rows if row[:2] == ["SwAV", "entropy only"])
    assert entropy_only[2:7] == ["E2MC", "Gaussian CDF", "10", "0", "3"]
    mean, half_width = expected(probes(records, "swav", "entropy_only", 3, 0.1))
    assert entropy_only[8] == f"{mean:.2f} ± {half_width:.2f}"
    alternatives = tables.alternative_criteria(frame)
    assert {row[1] for row in alternatives.rows} == {"original loss", "E2MC", "uniformity"}
    uniformity = next(row for row in alternatives.rows if row[:2] == ["VICReg", "uniformity"])
    assert uniformity[2] == "uniformity"
    mean, half_width = expected(probes(records, "vicreg", "uniformity", 3, 0.01))
    assert uniformity[7] == f"{mean:.2f} ± {half_width:.2f}"
    # an alternative criterion is named as its arm is (vc -> variance-covariance), not by its config key
    vc = frame[frame["arm"] == "uniformity"].assign(arm="vc", criterion_name="vc")
    vc_row = next(row for row in tables.alternative_criteria(pd.concat([frame, vc], ignore_index=True)).rows
                  if row[:2] == ["VICReg", "variance-covariance"])
    assert vc_row[2] == "variance-covariance"
    # another E2MC variant (here a coefficient) is a row of the ablation table, after the named ones
    variant = frame[frame["arm"] == "e2mc"].assign(arm="e2mc_cov5", criterion_cov_coeff=5.0)
    ablation = tables.ablations(pd.concat([frame, variant], ignore_index=True))
    rows = [row for row in ablation.rows if row[0] == "VICReg"]
    assert [row[1] for row in rows] == ["E2MC", "entropy only", "covariance only", "E2MC (λ_cov 5)"]
    assert rows[3][2:6] == ["E2MC", "sigmoid", "10", "5"] and rows[3][7:] == rows[0][7:]
    no_alternatives = frame[~frame["arm"].isin(["uniformity"])]
    no_alternatives.attrs["results_dir"] = "results/x"
    with pytest.raises(frames.MissingResultsError, match=r"no linear_probe results with arm in \['uniformity', "
                                                         r"'mmcr', 'vc'\] in results/x; run make reproduce first"):
        tables.alternative_criteria(no_alternatives)
    # a method that was not ablated has no rows in the ablation table, though it has E2MC results
    vicreg_not_ablated = frame[~((frame["method"] == "vicreg") & frame["arm"].isin(["entropy_only", "covariance_only"]))]
    assert {row[0] for row in tables.ablations(vicreg_not_ablated).rows} == {"SwAV"}
    assert "over 2 seeds," in ablation.caption  # the fixture's two seeds
    one_seed = frame[~((frame["arm"] == "entropy_only") & (frame["seed"] == 1))]
    assert "over 1 to 2 seeds (a cell without ± has one)," in tables.ablations(one_seed).caption


def test_training_dynamics_table_and_figure(frame, records, tmp_path):
    table = tables.training_dynamics(frame)
    runs = [r for r in records if r["kind"] == "training"]
    assert [row[:3] for row in table.rows] == [["VICReg", "E2MC", str(e)] for e in (1, 2, 3)]
    for row in table.rows:
        epoch = int(row[2])
        for column, key in ((3, "marginal_entropy"), (4, "covariance_penalty")):
            values = [next(e[key] for e in r["extra"]["epochs"] if e["epoch"] == epoch) for r in runs]
            mean, half_width = expected(values)
            printed_mean, printed_half_width = row[column].split(" ± ")
            decimals = len(printed_half_width.split(".")[1])  # the half-width's two significant digits
            assert float(printed_half_width) == pytest.approx(half_width, rel=0.05)
            assert float(printed_mean) == pytest.approx(mean, abs=0.51 * 10 ** -decimals)
            assert len(printed_mean.split(".")[1]) == decimals
    fig = plots.training_dynamics(frame)
    entropy_line = fig.axes[0].lines[0]
    np.testing.assert_allclose(entropy_line.get_ydata(), [np.mean([r["extra"]["epochs"][k]["marginal_entropy"]
                                                                   for r in runs]) for k in range(3)])
    assert_png(figure_style.save_figure(fig, tmp_path, "dynamics", ["png"])[0])
    # epoch 0 is the base checkpoint's diagnostics value, after the same transform as the panel's
    base = _diagnostics(records, "base")
    point = next(line for line in fig.axes[0].lines if line.get_label().startswith("base checkpoint at epoch 0"))
    assert fig.axes[0].get_title() == "VICReg, sigmoid"
    np.testing.assert_allclose(point.get_ydata(), [base["metrics"]["marginal_entropy_sigmoid"]])
    # a second arm with the same records overprints the first: the panel says so
    twin = frame[frame["kind"] == "training"].assign(arm="entropy_only")
    fig = plots.training_dynamics(pd.concat([frame, twin], ignore_index=True))
    assert "overprint: E2MC = entropy only" in fig.axes[0].get_xlabel()
    no_epochs = frame.copy()
    no_epochs["extra"] = [{} if kind == "training" else extra for kind, extra in zip(frame["kind"], frame["extra"])]
    with pytest.raises(frames.MissingResultsError, match=r"no extra\['epochs'\] list"):
        tables.training_dynamics(no_epochs)


def test_write_table_markdown_and_latex(frame, tmp_path):
    table = tables.main_results(frame)
    md_path, tex_path = tables.write_table(table, tmp_path / "out")
    markdown = md_path.read_text().splitlines()
    assert markdown[2] == "| Method | Arm | Epoch | 1% | 10% |"
    assert markdown[3] == "|---|---|---|---:|---:|"
    assert markdown[4:] == ["| " + " | ".join(row) + " |" for row in table.rows]
    latex = tex_path.read_text()
    assert r"\begin{tabular}{lllrr}" in latex and latex.count(r"\\") == len(table.rows) + 1
    assert r"Method & Arm & Epoch & 1\% & 10\% \\" in latex
    first = table.rows[0]
    mean, half_width = first[3].split(" ± ")
    assert "VICReg & base checkpoint & 0 & " + mean + r" $\pm$ " + half_width in latex
    assert "±" not in latex and "%" not in latex.replace(r"\%", "")


def test_format_helpers():
    assert tables.format_cell(71.234, 0.4) == "71.23 ± 0.40"
    assert tables.format_cell(71.234, math.nan) == "71.23"
    # digits set by the interval: two significant ones of the half-width, the mean to the same place
    assert tables.format_cell(-1.02712, 0.005019, None) == "-1.0271 ± 0.0050"
    assert tables.format_cell(0.002562, 8.049e-05, None) == "0.002562 ± 0.000080"
    assert tables.format_cell(84.123, 1.7, None) == "84.1 ± 1.7"
    assert tables.format_cell(-0.78991, math.nan, None) == "-0.7899"
    assert [naming.fraction_label(f) for f in (0.01, 0.1, 1.0, None, math.nan)] == ["1%", "10%", "100%", "all", "all"]
    assert tables.latex_escape("a_b & 5% ± λ") == r"a\_b \& 5\% $\pm$ $\lambda$"


# --- missing / malformed results ----------------------------------------------------------------

def test_missing_results_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="results directory results/nothing not found .*make reproduce"):
        notebook_io.resolve_io_dirs("results/nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no result files"):
        notebook_io.load_results(tmp_path / "empty")


def test_malformed_results_directory_is_named(tmp_path):
    (tmp_path / "bad.json").write_text('{"schema": "e2mc-result-v1", "kind": "linear_probe"}')
    with pytest.raises(ResultFileError, match="bad.json: missing field"):
        notebook_io.load_results(tmp_path)
    empty = pd.DataFrame()
    empty.attrs["results_dir"] = "results/x"
    with pytest.raises(frames.MissingResultsError, match="no result files in results/x"):
        tables.main_results(empty)
    no_fraction = pd.DataFrame({"kind": ["linear_probe"], "top1": [1.0]})
    no_fraction.attrs["results_dir"] = "results/x"
    with pytest.raises(frames.MissingResultsError,
                       match=r"results in results/x have no column\(s\) \['label_fraction'\]"):
        plots.fig6_epochs(no_fraction)


def test_resolve_io_dirs_from_cwd_then_repo_root(tmp_path, monkeypatch):
    (tmp_path / "results" / "mini").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    results, output = notebook_io.resolve_io_dirs("results/mini")
    assert (results, output) == (tmp_path / "results" / "mini", tmp_path / "figures" / "mini")
    assert notebook_io.resolve_io_dirs("results/mini", "out")[1] == tmp_path / "out"
    assert notebook_io.resolve_io_dirs("results/mini", tmp_path / "abs")[1] == tmp_path / "abs"
    # from elsewhere (e.g. notebooks/), a relative path falls back to the repository root
    root = notebook_io.repo_root()
    assert root is not None and (root / "tests" / "fixtures" / "results_small").is_dir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    results, output = notebook_io.resolve_io_dirs("tests/fixtures/results_small")
    assert results == root / "tests" / "fixtures" / "results_small"
    assert output == root / "tests" / "fixtures" / "results_small" / "figures"  # not under results/: beside it


def test_save_figure_rejects_unknown_formats_and_pdfs_are_reproducible(tmp_path):
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return fig

    with pytest.raises(ValueError, match="choose from"):
        figure_style.save_figure(draw(), tmp_path, "x", ["jpeg"])
    first = figure_style.save_figure(draw(), tmp_path / "a", "x", ["pdf"])[0].read_bytes()
    assert figure_style.save_figure(draw(), tmp_path / "b", "x", ["pdf"])[0].read_bytes() == first


def test_all_tables_skips_what_a_partial_grid_cannot_fill(frame):
    made, skipped = tables.all_tables(frame)
    assert {t.name for t in made} >= {"main_results", "ablations", "alternative_criteria"} and not skipped
    partial = frame[~frame.arm.isin(["entropy_only", "covariance_only", "uniformity"])]
    made, skipped = tables.all_tables(partial)
    assert "ablations" not in {t.name for t in made} and "main_results" in {t.name for t in made}
    assert any("entropy_only" in reason for reason in skipped)
    with pytest.raises(frames.MissingResultsError, match="no table can be made"):
        tables.all_tables(frame[frame.kind == "diagnostics"])


def test_readme_blocks_are_replaced_by_the_written_tables_and_only_when_changed(frame, tmp_path):
    table = tables.main_results(frame)
    tables.write_table(table, tmp_path / "figures" / "mini")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- e2mc:table mini/main_results -->\nold numbers\n<!-- e2mc:end -->\noutro\n")
    assert tables.sync_readme_tables(readme, tmp_path / "figures") == ["mini/main_results"]
    assert readme.read_text() == ("intro\n<!-- e2mc:table mini/main_results -->\n" + table.to_markdown()
                                  + "<!-- e2mc:end -->\noutro\n")
    before = readme.stat().st_mtime_ns
    assert tables.sync_readme_tables(readme, tmp_path / "figures") == []
    assert readme.stat().st_mtime_ns == before  # nothing rewritten

    readme.write_text("<!-- e2mc:table mini-converged/ablations -->\n<!-- e2mc:end -->\n")
    with pytest.raises(frames.MissingResultsError, match="mini-converged/ablations.md does not exist"):
        tables.sync_readme_tables(readme, tmp_path / "figures")
    assert readme.read_text() == "<!-- e2mc:table mini-converged/ablations -->\n<!-- e2mc:end -->\n"


def test_the_readme_shows_the_committed_tables():
    """Whoever redraws figures/<folder> must refresh the README (make notebooks does): its blocks are the files."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    blocks = list(tables.README_BLOCK.finditer(text))
    assert {m["name"] for m in blocks} >= {"mini/main_results"}
    for block in blocks:
        assert block["body"] == (root / "figures" / f"{block['name']}.md").read_text(), block["name"]
