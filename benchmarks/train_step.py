"""Images/s of a continued pre-training step, per method, with and without E2MC.

    python benchmarks/train_step.py [--device cpu|cuda] [--steps 20]

On the CPU it times the mini configs (configs/mini/*.yaml: ConvNet, Fashion-MNIST-sized batches of 256,
augmentation included); on a GPU also ResNet-50 with the paper's heads at batch 256 per device (bf16
autocast, channels_last). One step = augment (mini) + forward + loss + backward + optimiser step.
Writes results/benchmarks/train_step-<device>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, synchronize  # noqa: E402

from e2mc.config import load_config  # noqa: E402
from e2mc.data import make_mini_augment  # noqa: E402
from e2mc.optim import build_optimizer  # noqa: E402
from e2mc.provenance import REPO_ROOT, provenance, write_json_atomic  # noqa: E402
from e2mc.build import build_added_criterion, build_network, build_objective  # noqa: E402
from e2mc.criteria import get_criterion  # noqa: E402
from e2mc.methods import get_method, method_names  # noqa: E402
from e2mc.train import MultiViewNetwork, compute_loss  # noqa: E402


def time_steps(cfg, device: torch.device, steps: int, imagenet: bool) -> float:
    """Median seconds per training step of ``cfg`` on random data."""
    import time

    network = build_network(cfg).to(device).to(memory_format=torch.channels_last)
    objective, added = build_objective(cfg).to(device), build_added_criterion(cfg)
    optimizer = build_optimizer(cfg.optim.name, network, 0.01, 0.9, cfg.optim.weight_decay, cfg.optim.eta)
    method = get_method(cfg.method)
    forward = MultiViewNetwork(network, method)
    consumes = get_criterion(cfg.criterion.name).inputs
    batch = cfg.data.batch_size
    generator = torch.Generator(device=device).manual_seed(0)
    if imagenet:
        views = [torch.randn(batch, 3, r.size, r.size, device=device).contiguous(memory_format=torch.channels_last)
                 for r in method.imagenet_views]
        augment = None
    else:
        images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
        augment = make_mini_augment(cfg.method).to(device)
    use_amp = device.type == "cuda"
    times = []
    for step in range(steps + 3):
        synchronize(device)
        start = time.perf_counter()
        if augment is not None:
            views = [v.contiguous(memory_format=torch.channels_last) for v in augment(images, generator)]
        method.before_step(network)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, _, _ = compute_loss(method, forward(views), batch, objective, added, network, consumes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    settings = [("mini", False, [])]
    if device.type == "cuda":
        settings.append(("resnet50", True, ["model.backbone=resnet50", "model.widths=null", "model.heads={}",
                                            "data.batch_size=256"]))
    rows = []
    for scale, imagenet, extra in settings:
        for method in method_names():
            base = REPO_ROOT / "configs" / "mini" / f"{method}.yaml"
            timings = {}
            for criterion in ("none", "e2mc"):
                overrides = [f"criterion.name={criterion}", *extra]
                cfg = load_config(base, overrides)
                timings[criterion] = time_steps(cfg, device, args.steps, imagenet)
            overhead = timings["e2mc"] / timings["none"] - 1
            row = {"scale": scale, "method": method, "batch": cfg.data.batch_size,
                   "images_per_s_original": cfg.data.batch_size / timings["none"],
                   "images_per_s_e2mc": cfg.data.batch_size / timings["e2mc"], "e2mc_overhead": overhead}
            rows.append(row)
            print(f"{scale:8s} {method:8s} original {row['images_per_s_original']:8.0f} img/s   "
                  f"+E2MC {row['images_per_s_e2mc']:8.0f} img/s   overhead {100 * overhead:5.1f}%", flush=True)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / f"train_step-{device.type}.json"
    write_json_atomic(out, {"benchmark": "continued pre-training step", "device_name": device_name(device),
                            "threads": torch.get_num_threads(), "steps": args.steps, "rows": rows,
                            "provenance": provenance(device)})
    print(f"\nwrote {out}\n\n| scale | method | original img/s | +E2MC img/s | E2MC overhead |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']} | {r['method']} | {r['images_per_s_original']:.0f} | {r['images_per_s_e2mc']:.0f} "
              f"| {100 * r['e2mc_overhead']:.1f}% |")


if __name__ == "__main__":
    main()
