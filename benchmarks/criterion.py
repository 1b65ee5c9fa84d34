"""Forward + backward time of the E2MC add-on and of each SSL objective.

    python benchmarks/criterion.py [--device cpu|cuda] [--quick] [--out PATH]

Writes results/benchmarks/criterion-<device>.json and prints a Markdown table. The E2MC add-on is
timed side by side with the same add-on computed as the reference code does (explicit D x D
covariance, sort along the batch dimension), so the speed-up is measured in one run; the two forms'
losses are compared as well (``agreement_vs_reference_dxd``). On CUDA every tensor, the SwAV
prototypes included, lives on the device, and the time is taken after torch.cuda.synchronize().
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, time_call  # noqa: E402

from e2mc.criterion import E2MC, covariance_penalty_direct, to_compact  # noqa: E402
from e2mc.objectives import MMCR, SimSiamLoss, SwAVLoss, Uniformity, VarianceCovariance, VICRegLoss  # noqa: E402
from e2mc.provenance import REPO_ROOT, provenance, write_json_atomic  # noqa: E402


def reference_e2mc(z1, z2, ent_coeff=10.0, cov_coeff=1.0, transform="sigmoid", eps=1e-7):
    """The add-on as the authors' code computes it: explicit D x D covariance, sort along dim 0."""
    def entropy(u):
        n = u.shape[0]
        m = round(n**0.5)
        ordered = torch.sort(u, dim=0).values
        return torch.log((n + 1) / m * (ordered[m:] - ordered[:-m]) + eps).mean(dim=0)

    u1, u2 = (to_compact(z.float(), transform) for z in (z1, z2))
    u1, u2 = u1 - u1.mean(0), u2 - u2.mean(0)
    h = (entropy(u1).mean() + entropy(u2).mean()) / 2
    c = covariance_penalty_direct(u1) + covariance_penalty_direct(u2)
    return cov_coeff * c - ent_coeff * h


def candidates(n: int, d: int, device: torch.device | str = "cpu"):
    """(name, loss function of (z1, z2)) pairs; every function returns a scalar. Tensors they hold (the
    SwAV prototypes) are made on ``device`` once, so no step times a host-to-device copy."""
    e2mc = E2MC("sigmoid", 10.0, 1.0)
    vicreg, simsiam = VICRegLoss(), SimSiamLoss()
    swav = SwAVLoss()
    prototypes = F.normalize(torch.randn(min(3000, 4 * d), d, generator=torch.Generator().manual_seed(1)),
                             dim=1).to(device)
    uniformity, mmcr, vc = Uniformity(), MMCR(), VarianceCovariance()
    return [
        ("e2mc", lambda a, b: e2mc(a, b)["loss"]),
        ("e2mc_reference_dxd", reference_e2mc),
        ("vicreg", lambda a, b: vicreg(a, b)["loss"]),
        ("simsiam", lambda a, b: simsiam(a, b, a.detach(), b.detach())["loss"]),
        ("swav", lambda a, b: swav([F.normalize(a, dim=1), F.normalize(b, dim=1)],
                                   prototypes)["loss"]),
        ("uniformity", lambda a, b: uniformity(a, b)["loss"]),
        ("mmcr", lambda a, b: mmcr(a, b)["loss"]),
        ("vc", lambda a, b: vc(a, b)["loss"]),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="only N=512, D in {128, 8192}")
    parser.add_argument("--out", default=None, help="output JSON (default results/benchmarks/criterion-<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    sizes = [(512, 128), (512, 8192)] if args.quick else [(n, d) for n in (256, 512, 2048) for d in (128, 2048, 8192)]
    rows, agreement = [], {}
    for n, d in sizes:
        g = torch.Generator().manual_seed(0)
        z1 = torch.randn(n, d, generator=g).to(device).requires_grad_()
        z2 = torch.randn(n, d, generator=g).to(device).requires_grad_()
        with torch.no_grad():
            ours, ref = E2MC("sigmoid", 10.0, 1.0)(z1, z2)["loss"].item(), reference_e2mc(z1, z2).item()
        agreement[f"N={n},D={d}"] = {"e2mc": ours, "e2mc_reference_dxd": ref, "abs_difference": abs(ours - ref)}
        for name, loss_fn in candidates(n, d, device):
            def step():
                z1.grad = z2.grad = None
                loss_fn(z1, z2).backward()
            timing = time_call(step, device)
            rows.append({"N": n, "D": d, "criterion": name, **timing})
            print(f"N={n:5d} D={d:5d} {name:20s} {timing['median_ms']:10.2f} ms", flush=True)
    speedups = {}
    for n, d in sizes:
        ours = next(r for r in rows if (r["N"], r["D"], r["criterion"]) == (n, d, "e2mc"))
        ref = next(r for r in rows if (r["N"], r["D"], r["criterion"]) == (n, d, "e2mc_reference_dxd"))
        speedups[f"N={n},D={d}"] = ref["median_ms"] / ours["median_ms"]
    kind = device.type
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / f"criterion-{kind}.json"
    write_json_atomic(out, {"benchmark": "criterion forward+backward", "device_name": device_name(device),
                            "speedup_vs_reference_dxd": speedups, "agreement_vs_reference_dxd": agreement,
                            "rows": rows,
                            "provenance": provenance(device)})
    print(f"\nwrote {out}\n")
    print(markdown_table(rows, speedups))


def markdown_table(rows, speedups) -> str:
    names = list(dict.fromkeys(r["criterion"] for r in rows))
    sizes = list(dict.fromkeys((r["N"], r["D"]) for r in rows))
    lines = ["| N | D | " + " | ".join(names) + " | E2MC speed-up vs D x D |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for n, d in sizes:
        cells = [f"{next(r['median_ms'] for r in rows if (r['N'], r['D'], r['criterion']) == (n, d, c)):.2f}"
                 for c in names]
        lines.append(f"| {n} | {d} | " + " | ".join(cells) + f" | {speedups[f'N={n},D={d}']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
