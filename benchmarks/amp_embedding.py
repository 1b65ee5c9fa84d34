"""What bf16 autocast does to the embedding E2MC sees, with and without a float32 last layer.

    python benchmarks/amp_embedding.py [--seed 0] [--out results/benchmarks/amp_embedding-cpu.json]

For the paper's two heads at ImageNet size (VICReg's 2048-8192-8192-8192 expander with the sigmoid,
SwAV's 2048-2048-128 projection with the Gaussian CDF; random weights, a batch of 512 random
features), it computes the E2MC loss of the embedding three ways on CPU: all in float32 (the
reference), under torch.autocast(bfloat16) with the last layer in float32 (:class:`EmbeddingHead`,
what ``train.amp`` now does), and under autocast with every layer in bf16 (the embedding cast up
afterwards, as before). It prints a Markdown table of the loss differences from the reference and the
share of zero m-spacings, where the entropy's gradient is ``c / eps``, and saves the numbers with their
provenance to ``results/benchmarks/amp_embedding-cpu.json``. Takes about a minute on 2 cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from e2mc.criterion import E2MC, default_window
from e2mc.heads import EmbeddingHead, projection_mlp
from e2mc.provenance import REPO_ROOT, provenance, write_json_atomic


def zero_spacing_share(z: torch.Tensor, transform: str) -> float:
    """Share of the m-spacings of the compact embedding that are exactly 0 (ties), in float32."""
    u = torch.sigmoid(z.float()) if transform == "sigmoid" else torch.special.ndtr(z.float())
    m = default_window(u.shape[0])
    ordered = torch.sort(u, dim=0).values
    return (ordered[m:] == ordered[:-m]).float().mean().item()


def measure(head: EmbeddingHead, transform: str, features: torch.Tensor) -> dict[str, float]:
    criterion = E2MC(transform, gather=False)
    plain = nn.Sequential(*head)  # the same modules, every one under autocast
    head.eval(), plain.eval()     # BN with running statistics: the two views see the same layers
    with torch.no_grad():
        z_ref = [head(x) for x in features]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_tail = [head(x) for x in features]
            z_bf16 = [plain(x) for x in features]
        loss = {name: criterion(*z)["loss"].item() for name, z in
                (("float32", z_ref), ("float32 tail", z_tail), ("bf16", z_bf16))}
    return {"loss_float32": loss["float32"],
            "diff_float32_tail": loss["float32 tail"] - loss["float32"],
            "diff_bf16": loss["bf16"] - loss["float32"],
            "zero_spacings_float32_tail": zero_spacing_share(z_tail[0], transform),
            "zero_spacings_bf16": zero_spacing_share(z_bf16[0], transform),
            "embedding_dtype_bf16": str(z_bf16[0].dtype), "embedding_dtype_tail": str(z_tail[0].dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="output JSON (default results/benchmarks/amp_embedding-cpu.json)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    features = [torch.randn(512, 2048).relu() for _ in range(2)]  # two views of pooled ResNet-like features
    swav_head = EmbeddingHead(nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True), nn.Linear(2048, 128))
    rows = [("VICReg expander, sigmoid", measure(projection_mlp([2048, 8192, 8192, 8192]), "sigmoid", features)),
            ("SwAV projection, Gaussian CDF", measure(swav_head, "gaussian_cdf", features))]
    print("| head | E2MC loss, float32 | float32 last layer − float32 | all bf16 − float32 "
          "| zero m-spacings, float32 last layer | zero m-spacings, all bf16 |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['loss_float32']:.6f} | {r['diff_float32_tail']:.2e} | {r['diff_bf16']:.2e} "
              f"| {r['zero_spacings_float32_tail']:.2%} | {r['zero_spacings_bf16']:.2%} |")
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / "amp_embedding-cpu.json"
    write_json_atomic(out, {"benchmark": "bf16 autocast and the E2MC loss of the embedding",
                            "batch": 512, "seed": args.seed, "heads": dict(rows),
                            "provenance": provenance(torch.device("cpu"))})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
