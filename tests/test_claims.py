"""The claims ledger: each verdict rule on synthetic frames whose paired intervals are computed here
with scipy (not through e2mc.frames)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from e2mc import claims, tables


def t_interval(differences):
    d = np.asarray(differences, dtype=float)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return d.mean(), (high - low) / 2


def probe_rows(method, arm, values, epoch=10, kind="linear_probe", fraction=0.01, metric="top1_last"):
    return [{"kind": kind, "method": method, "arm": arm, "epoch": epoch, "seed": seed, "label_fraction": fraction,
             "dataset": "fashion_mnist", metric: v, "top1": v + 0.5, "file": f"{method}_{arm}_{seed}_{epoch}.json"}
            for seed, v in enumerate(values)]


ORIGINAL = [70.0, 71.0, 69.0]


def frame_with(method_differences, **extra):
    rows = []
    for method, differences in method_differences.items():
        rows += probe_rows(method, "original", ORIGINAL, **extra)
        rows += probe_rows(method, "e2mc", [o + d for o, d in zip(ORIGINAL, differences)], **extra)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("expect, mean, ci, expected", [
    ("gain", 1.0, 0.3, claims.SUPPORTED),          # interval (0.7, 1.3) above 0
    ("gain", 0.1, 0.3, claims.CONTRADICTED),       # (-0.2, 0.4) below the paper's 0.5
    ("gain", -2.0, 0.5, claims.CONTRADICTED),      # a resolved loss
    ("gain", 0.2, 1.0, claims.INCONCLUSIVE),       # (-0.8, 1.2) reaches both 0 and 0.5
    ("gain", 0.2, float("nan"), claims.ONE_SEED),
    ("no_gain", 0.1, 0.3, claims.SUPPORTED),       # below 0.5
    ("no_gain", 0.9, 0.6, claims.CONTRADICTED),    # (0.3, 1.5): above 0 and reaching 0.5
    ("no_gain", 0.3, 1.0, claims.INCONCLUSIVE),
    ("smaller_gain", 0.25, 0.1, claims.SUPPORTED),
    ("smaller_gain", -4.8, 0.8, claims.CONTRADICTED),
    ("smaller_gain", 2.0, 0.5, claims.CONTRADICTED),
    ("smaller_gain", 0.2, 0.5, claims.INCONCLUSIVE),
])
def test_verdict_rules(expect, mean, ci, expected):
    assert claims.verdict(expect, mean, ci) == expected


def test_verdict_rejects_an_unknown_expectation():
    with pytest.raises(ValueError, match="expect"):
        claims.verdict("better", 1.0, 0.1)


def test_combine_needs_every_comparison():
    S, C, I, N = claims.SUPPORTED, claims.CONTRADICTED, claims.INCONCLUSIVE, claims.NOT_TESTABLE
    assert claims.combine([S, S, N]) == S
    assert claims.combine([S, C, I]) == C  # MMCR's resolved gain contradicts "no alternative helps"
    assert claims.combine([S, I]) == I
    assert claims.combine([N, N]) == N
    assert claims.combine([S, claims.ONE_SEED]) == claims.ONE_SEED


def test_ledger_verdicts_from_paired_intervals():
    supported, contradicted = [1.0, 1.2, 0.9], [0.05, -0.1, 0.1]
    ledger = claims.claims_ledger(frame_with({"vicreg": supported, "swav": contradicted}), converged_base=False)
    by_claim = ledger.set_index("claim")
    vicreg = by_claim.loc["E2MC improves VICReg"]
    mean, half = t_interval(supported)
    assert vicreg["numbers"][0]["mean"] == pytest.approx(mean) and vicreg["numbers"][0]["ci"] == pytest.approx(half)
    assert vicreg["verdict"] == claims.SUPPORTED and f"{mean:+.2f} ± {half:.2f} (n=3" in vicreg["evidence"]
    assert vicreg["metric"] == "top-1 at the probe's last epoch, no selection"
    mean, half = t_interval(contradicted)
    assert mean + half < claims.PAPER_EFFECT and mean - half < 0
    assert by_claim.loc["E2MC improves SwAV", "verdict"] == claims.CONTRADICTED
    assert by_claim.loc["E2MC improves SimSiam less", "verdict"] == claims.NOT_TESTABLE
    assert "SimSiam" in by_claim.loc["E2MC improves SimSiam less", "reason"]
    converged = "The original loss alone brings no notable gain on a converged base"
    assert by_claim.loc[converged, "verdict"] == claims.NOT_TESTABLE
    assert "not converged" in by_claim.loc[converged, "reason"]
    assert len(ledger) == len(claims.paper_claims(["vicreg", "swav"])) == 9


def test_ledger_inconclusive_when_the_interval_reaches_the_paper_effect():
    wide = [2.0, -1.0, 0.5]
    mean, half = t_interval(wide)
    assert mean - half < 0 < claims.PAPER_EFFECT < mean + half
    ledger = claims.claims_ledger(frame_with({"vicreg": wide}), converged_base=False).set_index("claim")
    assert ledger.loc["E2MC improves VICReg", "verdict"] == claims.INCONCLUSIVE


def test_ledger_uses_best_epoch_only_without_an_unselected_number():
    frame = frame_with({"vicreg": [1.0, 1.2, 0.9]}).drop(columns="top1_last")
    row = claims.claims_ledger(frame, converged_base=False).set_index("claim").loc["E2MC improves VICReg"]
    assert "best test epoch" in row["metric"]


def test_growth_claim_pairs_each_seed_across_epochs():
    early, late = [0.1, 0.0, 0.2], [1.1, 1.3, 0.9]
    frame = pd.concat([frame_with({"vicreg": early}, epoch=1), frame_with({"vicreg": late}, epoch=10)],
                      ignore_index=True)
    row = claims.claims_ledger(frame, converged_base=True).set_index("claim").iloc[-1]
    mean, half = t_interval(np.subtract(late, early))
    assert row["numbers"][0]["mean"] == pytest.approx(mean) and row["numbers"][0]["ci"] == pytest.approx(half)
    assert row["verdict"] == claims.SUPPORTED


def test_claims_table_is_written_as_claims_md(tmp_path):
    ledger = claims.claims_ledger(frame_with({"vicreg": [1.0, 1.2, 0.9]}), converged_base=False)
    paths = tables.write_table(tables.claims_table(ledger, "results/x"), tmp_path)
    text = paths[0].read_text()
    assert paths[0].name == "claims.md" and "| E2MC improves VICReg | supported |" in text
    assert "results/x" in text and "0.5 points" in text
