"""Images/s of a continued pre-training step, per method, with and without E2MC.

    python benchmarks/train_step.py [--device cpu|cuda] [--steps 20] [--warmup 3] [--scales mini,resnet50]

On the CPU it times the mini configs (configs/mini/*.yaml: ConvNet, Fashion-MNIST-sized batches of 256,
augmentation included); on a GPU also ResNet-50 with the paper's heads at batch 256 per device (bf16
autocast, channels_last). One step = augment (mini) + forward + loss + backward + optimiser step.
Every registered method is timed (e2mc.methods.method_names()), each with the original loss alone and
with E2MC added. Reported per method: images/s of both, E2MC's overhead (step time with E2MC over
step time without, minus 1), E2MC's share of the step (the extra time over the step time with E2MC),
E2MC's forward + backward timed alone on the embeddings the step feeds it, and whether the overhead
meets the scale's target (mini: at most 15 %; ResNet-50: at most 5 %).
Writes results/benchmarks/train_step-<device>.json (with provenance) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, synchronize, time_call  # noqa: E402

from e2mc.config import load_config  # noqa: E402
from e2mc.data import make_mini_augment  # noqa: E402
from e2mc.optim import build_optimizer  # noqa: E402
from e2mc.provenance import REPO_ROOT, provenance, write_json_atomic  # noqa: E402
from e2mc.build import build_added_criterion, build_network, build_objective  # noqa: E402
from e2mc.criteria import get_criterion  # noqa: E402
from e2mc.methods import get_method, method_names  # noqa: E402
from e2mc.epoch import MultiViewNetwork, compute_loss  # noqa: E402

# (scale, ImageNet-sized views, config overrides, target: largest acceptable E2MC overhead)
SCALES = {
    "mini": (False, [], 0.15),
    "resnet50": (True, ["model.backbone=resnet50", "model.widths=null", "model.heads={}", "data.batch_size=256"],
                 0.05),
}


def time_steps(cfg, device: torch.device, steps: int, imagenet: bool, warmup: int = 3) -> dict:
    """Median seconds per training step of ``cfg`` on random data (``warmup`` steps excluded) and, when
    an added criterion is configured, the median time of its forward + backward alone on inputs of the
    shapes and dtypes the step fed it."""
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
        augment = make_mini_augment(method).to(device)
    fed = []
    if added is not None:
        added.register_forward_hook(lambda module, inputs, output: fed.__setitem__(
            slice(None), [(tuple(x.shape), x.dtype) for x in inputs]))
    use_amp = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + warmup):
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
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{cfg.method} + {cfg.criterion.name}: non-finite loss at step {step}")
    times.sort()
    result = {"step_s": times[len(times) // 2],
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    del network, objective, optimizer, forward, views
    if added is not None and fed:
        inputs = [torch.randn(shape, device=device, generator=generator).to(dtype).requires_grad_()
                  for shape, dtype in fed]

        def criterion_step():
            for x in inputs:
                x.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = added(*inputs)["loss"]
            out.backward()

        result["criterion_ms"] = time_call(criterion_step, device, min_seconds=0.2, min_repeats=3,
                                           max_repeats=max(steps, 3))["median_ms"]
        result["criterion_inputs"] = [[list(shape), str(dtype).removeprefix("torch.")] for shape, dtype in fed]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--scales", default=None,
                        help="comma-separated, of: mini, resnet50 (default: mini on the CPU, both on a GPU)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the registered methods")
    parser.add_argument("--out", default=None, help="output JSON (default results/benchmarks/train_step-<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    scales = args.scales.split(",") if args.scales else (["mini", "resnet50"] if device.type == "cuda" else ["mini"])
    unknown = [s for s in scales if s not in SCALES]
    if unknown:
        parser.error(f"unknown scale(s) {', '.join(unknown)}; choose from {', '.join(SCALES)}")
    methods = args.methods.split(",") if args.methods else list(method_names())
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(method_names())}")
    rows = []
    began = time.perf_counter()
    for scale in scales:
        imagenet, extra, target = SCALES[scale]
        for method in methods:
            base = REPO_ROOT / "configs" / "mini" / f"{method}.yaml"
            timings = {}
            for criterion in ("none", "e2mc"):
                cfg = load_config(base, [f"criterion.name={criterion}", "train.init=null", *extra])
                timings[criterion] = time_steps(cfg, device, args.steps, imagenet, args.warmup)
            t_none, t_e2mc = timings["none"]["step_s"], timings["e2mc"]["step_s"]
            overhead = t_e2mc / t_none - 1
            batch = cfg.data.batch_size
            row = {"scale": scale, "method": method, "batch": batch,
                   "step_ms_original": 1e3 * t_none, "step_ms_e2mc": 1e3 * t_e2mc,
                   "images_per_s_original": batch / t_none, "images_per_s_e2mc": batch / t_e2mc,
                   "e2mc_overhead": overhead,
                   "e2mc_share_of_step": (t_e2mc - t_none) / t_e2mc,
                   "e2mc_criterion_ms": timings["e2mc"].get("criterion_ms"),
                   "e2mc_criterion_share_of_step": (timings["e2mc"]["criterion_ms"] / (1e3 * t_e2mc)
                                                    if "criterion_ms" in timings["e2mc"] else None),
                   "e2mc_criterion_inputs": timings["e2mc"].get("criterion_inputs"),
                   "peak_memory_gib_original": timings["none"]["peak_memory_gib"],
                   "peak_memory_gib_e2mc": timings["e2mc"]["peak_memory_gib"],
                   "target_max_overhead": target, "meets_target": overhead <= target}
            rows.append(row)
            print(f"{scale:8s} {method:12s} original {row['images_per_s_original']:8.0f} img/s   "
                  f"+E2MC {row['images_per_s_e2mc']:8.0f} img/s   overhead {100 * overhead:5.1f}%   "
                  f"share {100 * row['e2mc_share_of_step']:5.1f}%   "
                  f"{'meets' if row['meets_target'] else 'MISSES'} <= {100 * target:.0f}%   "
                  f"[{time.perf_counter() - began:.0f} s]", flush=True)
    targets = {}
    for scale in scales:
        scale_rows = [r for r in rows if r["scale"] == scale]
        targets[scale] = {"target_max_overhead": SCALES[scale][2],
                          "largest_overhead": max(r["e2mc_overhead"] for r in scale_rows),
                          "met_by_every_method": all(r["meets_target"] for r in scale_rows)}
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / f"train_step-{device.type}.json"
    write_json_atomic(out, {"benchmark": "continued pre-training step", "device_name": device_name(device),
                            "threads": torch.get_num_threads(), "steps": args.steps, "warmup_steps": args.warmup,
                            "amp": "bf16 autocast" if device.type == "cuda" else None, "channels_last": True,
                            "targets": targets, "rows": rows, "seconds": time.perf_counter() - began,
                            "provenance": provenance(device)})
    print(f"\nwrote {out}\n\n| scale | method | original img/s | +E2MC img/s | E2MC overhead | E2MC share of step "
          "| E2MC alone (ms) | target |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        alone = f"{r['e2mc_criterion_ms']:.2f}" if r["e2mc_criterion_ms"] is not None else "-"
        print(f"| {r['scale']} | {r['method']} | {r['images_per_s_original']:.0f} | {r['images_per_s_e2mc']:.0f} "
              f"| {100 * r['e2mc_overhead']:.1f}% | {100 * r['e2mc_share_of_step']:.1f}% | {alone} "
              f"| {'met' if r['meets_target'] else 'missed'} (<= {100 * r['target_max_overhead']:.0f}%) |")
    for scale, t in targets.items():
        print(f"\n{scale}: largest E2MC overhead {100 * t['largest_overhead']:.1f}% "
              f"(target <= {100 * t['target_max_overhead']:.0f}%): "
              f"{'met by every method' if t['met_by_every_method'] else 'NOT met by every method'}")


if __name__ == "__main__":
    main()
