"""Evaluating checkpoints: which network, which data, which protocols, and one result file per evaluation.

* :func:`e2mc.evaluation.loading.load_checkpoint` opens the network (see there).
* :func:`evaluate_network` runs the protocols of an :class:`EvaluationPlan` (linear probe, fine-tuning,
  transfer) for every label fraction and seed and writes one JSON per evaluation (e2mc.results schema).
* :func:`evaluate_checkpoint`, :func:`sweep` (every ``checkpoint-epochNNN.pt`` of a run) and
  :func:`make_epoch_probe_hook` (inside training) are the three ways in.
* :func:`diagnose_checkpoint` writes the embedding diagnostics of a checkpoint.
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import nn

from e2mc import checkpoints, data
from e2mc.config import Config, load_config
from e2mc.data.registry import EvaluationData
from e2mc.diagnostics import dimension_pairs, pair_coordinates, rankme, transformed_statistics
from e2mc.errors import UserError, check_writable_folder
from e2mc.methods import get_method
from e2mc.naming import infer_arm
from e2mc.evaluation.finetune import finetune
from e2mc.evaluation.image_probe import train_linear_on_images
from e2mc.evaluation.linear import ProbeSettings, train_linear_probe
from e2mc.evaluation.loading import (ResultContext, evaluation_data, evaluation_root, load_checkpoint,
                                     open_evaluation_data)
from e2mc.evaluation.plan import EvaluationPlan, plan_from_config
from e2mc.evaluation.sources import ImageSource, extract_features, network_device
from e2mc.evaluation.transfer import num_classes_of, transfer_sources
from e2mc.provenance import utc_now
from e2mc.results import existing_result, result_filename, write_result

EPOCH_CHECKPOINT = re.compile(r"checkpoint-epoch(\d+)\.pt")


def _probe_on_features(network: nn.Module, evaluation: EvaluationData, jobs: list[tuple[float, int]],
                       indices: list[torch.Tensor], settings: ProbeSettings, batch_size: int):
    """Encode the union of the jobs' training images and the test split once, then yield one probe per job."""
    needed = torch.unique(torch.cat(indices))
    train_x, train_y = extract_features(network, evaluation.train, needed, batch_size)
    test_x, test_y = extract_features(network, evaluation.test, None, batch_size)
    position = torch.full((len(evaluation.train),), -1, dtype=torch.long)
    position[needed] = torch.arange(len(needed))
    device = network_device(network)
    for (_, seed), chosen in zip(jobs, indices):
        rows = position[chosen]
        yield train_linear_probe(train_x[rows], train_y[rows], test_x, test_y, evaluation.num_classes, settings,
                                 seed, device)


def evaluate_network(network: nn.Module, context: ResultContext, evaluation: EvaluationData, plan: EvaluationPlan,
                     results_dir: str | Path, skip_existing: bool = False, workers: int = 8,
                     log: Callable[[str], None] | None = print) -> list[Path]:
    """Run ``plan`` on ``network`` (left in the mode it was in) and write one result file per
    (protocol, dataset, label fraction, seed) to ``results_dir``. With ``skip_existing`` an evaluation
    whose result is already there (see :func:`e2mc.results.existing_result`) is not run again.
    Returns the result paths, in plan order."""
    results_dir = Path(results_dir)
    was_training = network.training
    network.eval()
    written: list[Path] = []
    try:
        runs: list[tuple[str, Any]] = [(kind, evaluation) for kind in ("linear_probe", "finetune")
                                       if kind in plan.protocols]
        if "transfer" in plan.protocols:
            runs += [("transfer", dataset) for dataset in plan.transfer]
        for kind, source in runs:
            written += _run_kind(network, context, kind, source, plan, results_dir, skip_existing, workers, log)
    finally:
        network.train(was_training)
    return written


def _run_kind(network, context, kind, source, plan, results_dir, skip_existing, workers, log) -> list[Path]:
    if kind == "transfer":
        name, root = source
        train, test = transfer_sources(name, root, network, workers)
        evaluation = EvaluationData(name, train, test, num_classes_of(train, test),
                                    lambda fraction, seed: data.balanced_subset(train.labels, fraction, seed))
    else:
        evaluation = source
    plan = plan.for_dataset(context.trained_on)
    # The two transfer protocols of one checkpoint are two results: the protocol is part of their file name.
    named = f"{evaluation.name}-{plan.transfer_protocol_name()}" if kind == "transfer" else evaluation.name
    jobs, paths = [], []
    for fraction in plan.label_fractions:
        for seed in plan.seeds:
            name = (kind, context.method, context.arm, named, context.epoch, fraction, seed, context.config_hash)
            found = existing_result(results_dir, *name) if skip_existing else None
            path = found or results_dir / result_filename(*name)
            paths.append(path)
            if found is None:
                jobs.append((fraction, seed, path))
    if not jobs:
        return paths
    indices = [evaluation.subset(fraction, seed) for fraction, seed, _ in jobs]
    if kind == "finetune":
        settings = [plan.finetune_settings(fraction) for fraction, _, _ in jobs]
        outcomes = (finetune(network, evaluation.train, idx, evaluation.test, None, evaluation.num_classes, setting,
                             seed) for (_, seed, _), idx, setting in zip(jobs, indices, settings))
    elif kind == "transfer" and plan.transfer_protocol_name() == "reglog":
        settings = [plan.transfer_settings()] * len(jobs)
        outcomes = (train_linear_on_images(network, evaluation.train, idx, evaluation.test, None,
                                           evaluation.num_classes, settings[0], seed, plan.extraction_batch_size,
                                           head="reglog")
                    for (_, seed, _), idx in zip(jobs, indices))
    elif plan.probe_on == "images":
        settings = [plan.probe_settings()] * len(jobs)
        outcomes = (train_linear_on_images(network, evaluation.train, idx, evaluation.test, None,
                                           evaluation.num_classes, settings[0], seed, plan.extraction_batch_size)
                    for (_, seed, _), idx in zip(jobs, indices))
    else:
        settings = [plan.probe_settings()] * len(jobs)
        outcomes = _probe_on_features(network, evaluation, [(f, s) for f, s, _ in jobs], indices, settings[0],
                                      plan.extraction_batch_size)
    protocol = {}
    if kind == "transfer":
        protocol = {"protocol_name": plan.transfer_protocol_name()}
    probe_on = None if kind == "finetune" else "images" if protocol.get("protocol_name") == "reglog" else plan.probe_on
    device = network_device(network)
    started, tic = utc_now(), time.time()
    # Each result is written as soon as it exists (the first one's time includes encoding the images).
    for (fraction, seed, path), idx, setting, result in zip(jobs, indices, settings, outcomes):
        write_result(path, kind=kind, method=context.method, arm=context.arm, criterion=context.criterion,
                     epoch=context.epoch, label_fraction=fraction, seed=seed, dataset=evaluation.name,
                     metrics=result.metrics(),
                     extra={**context.extra, **result.history(), "protocol": kind, **protocol,
                            "probe_on": probe_on, "settings": setting.to_dict(),
                            "n_train": len(idx), "n_test": len(evaluation.test),
                            "num_classes": evaluation.num_classes, "seconds": time.time() - tic},
                     config=context.config, checkpoint=context.checkpoint, started=started, device=device)
        if log:
            metrics = result.metrics()
            log(f"[e2mc] {kind} {evaluation.name} {context.method}/{context.arm} epoch {context.epoch} "
                f"{100 * fraction:g}% labels seed {seed}: top-1 best {metrics['top1_best']:.2f} "
                f"last {metrics['top1_last']:.2f}")
        started, tic = utc_now(), time.time()
    return paths


# ----------------------------------------------------------------------------- entry points

def evaluate_checkpoint(checkpoint: str | Path, results_dir: str | Path, plan: EvaluationPlan | None = None, *,
                        method: str | None = None, arm: str | None = None, epoch: int | None = None,
                        dataset: str | None = None, data_root: str | Path | None = None,
                        subset_dir: str | Path | None = None, device: str = "auto", workers: int = 8,
                        skip_existing: bool = False) -> list[Path]:
    """Evaluate one checkpoint (see :func:`load_checkpoint`) on ``dataset`` (default: the one it was
    trained on; ImageNet for releases) with ``plan``; returns the result files written."""
    plan = plan or EvaluationPlan()
    check_writable_folder(results_dir, "results folder")  # before the evaluation, not after it
    loaded = load_checkpoint(checkpoint, method, device, arm, epoch)
    evaluation = open_evaluation_data(loaded, dataset, data_root, subset_dir, workers) if plan.uses_own_data else None
    return evaluate_network(loaded.network, loaded.context, evaluation, plan, results_dir, skip_existing, workers)


def epoch_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every ``checkpoint-epochNNN.pt`` in ``run_dir``, by epoch."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := EPOCH_CHECKPOINT.fullmatch(p.name)))
    if not found:
        raise FileNotFoundError(f"no checkpoint-epochNNN.pt in {run_dir}; train with "
                                "train.keep_epoch_checkpoints=true to keep one per epoch")
    return found


def default_results_dir(config: dict | None, run_dir: str | Path) -> Path:
    """``eval.results_dir`` of the run's configuration, else ``<run_dir>/eval``."""
    configured = (config or {}).get("eval", {}).get("results_dir")
    return Path(configured) if configured else Path(run_dir) / "eval"


def sweep(run_dir: str | Path, results_dir: str | Path | None = None, plan: EvaluationPlan | None = None, *,
          dataset: str | None = None, data_root: str | Path | None = None, subset_dir: str | Path | None = None,
          device: str = "auto", workers: int = 8, skip_existing: bool = True,
          epochs: Collection[int] | None = None) -> list[Path]:
    """Evaluate every ``checkpoint-epochNNN.pt`` of a run (the data of Fig. 6), epoch = NNN; with
    ``epochs``, only those (each must be kept: FileNotFoundError names those that are not).

    ``results_dir`` defaults to :func:`default_results_dir`; evaluations already on disk are skipped
    unless ``skip_existing`` is False. The evaluation data are loaded once."""
    plan = plan or EvaluationPlan()
    written: list[Path] = []
    evaluation = None
    if results_dir is not None:
        check_writable_folder(results_dir, "results folder")
    kept = epoch_checkpoints(run_dir)
    config_file = Path(run_dir) / "config.yaml"
    run_config = load_config(config_file).to_dict() if config_file.is_file() else None
    if epochs is not None:
        missing = sorted(set(epochs) - {epoch for epoch, _ in kept})
        if missing:
            raise FileNotFoundError(f"{run_dir} keeps no checkpoint-epochNNN.pt for epoch(s) "
                                    f"{', '.join(map(str, missing))}")
        kept = [(epoch, path) for epoch, path in kept if epoch in set(epochs)]
    for epoch, path in kept:
        loaded = load_checkpoint(path, device=device, epoch=epoch, run_config=run_config)
        target = Path(results_dir) if results_dir is not None else default_results_dir(loaded.context.config, run_dir)
        if evaluation is None and plan.uses_own_data:
            evaluation = open_evaluation_data(loaded, dataset, data_root, subset_dir, workers)
        written += evaluate_network(loaded.network, loaded.context, evaluation, plan, target, skip_existing, workers)
    return written


def make_epoch_probe_hook(cfg: Config, plan: EvaluationPlan | None = None, workers: int = 8,
                          epochs: Collection[int] | None = None) -> Callable[[int, nn.Module, Path], None]:
    """An ``epoch_end_hook`` for :func:`e2mc.train.train`: the evaluations of ``cfg.eval`` after every epoch.

    ``hook(epochs_done, network, output_dir)`` evaluates the in-memory network as the configuration's
    ``eval`` section says (:func:`plan_from_config`, unless ``plan`` is given) and writes the
    results (epoch = epochs_done) to ``cfg.eval.results_dir`` or ``<output_dir>/eval``. On its first
    call it also evaluates the starting model as epoch 0 if that is not on disk yet
    (``checkpoint-epoch000.pt`` when kept, else ``train.init``). With ``epochs`` it evaluates only
    after those epochs (and the starting model only if 0 is among them). Global RNG states are
    restored afterwards, so a run with the hook trains exactly as one without it.
    """
    plan = plan or plan_from_config(cfg.eval, cfg.data.dataset)
    config = cfg.to_dict()
    arm = infer_arm(config)
    state: dict[str, Any] = {"data": None, "start_checked": False}

    only = None if epochs is None else {int(e) for e in epochs}

    def hook(epochs_done: int, network: nn.Module, output_dir: Path) -> None:
        if only is not None and epochs_done not in only:
            return
        output_dir = Path(output_dir)
        results_dir = default_results_dir(config, output_dir)
        device = network_device(network)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if state["data"] is None:
                state["data"] = evaluation_data(cfg.data.dataset, evaluation_root(cfg), None, workers)
            evaluation = state["data"]
            kept = output_dir / f"checkpoint-epoch{epochs_done:03d}.pt"
            context = ResultContext(cfg.method, arm, epochs_done, config, str(kept) if kept.exists() else None)
            evaluate_start = not state["start_checked"] and (only is None or 0 in only)
            state["start_checked"] = True
            if evaluate_start:
                start = output_dir / "checkpoint-epoch000.pt"
                source = start if start.exists() else (Path(cfg.train.init) if cfg.train.init else None)
                if source is not None:
                    initial = copy.deepcopy(network)
                    if source == start:
                        initial.load_state_dict(checkpoints.load(start)["model"])
                    else:
                        checkpoints.load_initial_weights(source, get_method(cfg.method), initial)
                    evaluate_network(initial, replace(context, epoch=0, checkpoint=str(source)), evaluation, plan,
                                     results_dir, skip_existing=True, workers=workers)
                    del initial
            evaluate_network(network, context, evaluation, plan, results_dir, skip_existing=False, workers=workers)

    return hook


# ----------------------------------------------------------------------------- diagnostics

MAX_DIAGNOSTIC_PAIRS = 256  # dimension pairs stored per diagnostics file (~11 KB each at 2048 images)


def diagnose_network(network: nn.Module, source: ImageSource, method: str, n_images: int = 2048, n_pairs: int = 8,
                     seed: int = 0, batch_size: int = 512,
                     transforms: tuple[str, ...] = ("sigmoid", "gaussian_cdf")) -> tuple[dict, dict]:
    """Embedding statistics of ``network`` on ``n_images`` fixed images of ``source`` (metrics, extra).

    The images (a seeded random choice, sorted) and the ``n_pairs`` dimension pairs depend only on
    (len(source), n_images, seed) and (D, n_pairs, seed), so two checkpoints of one architecture are
    measured on the same points: ``extra["coordinates"][transform][p][k]`` is the transformed
    (x, y) of image ``extra["image_indices"][k]`` in dimensions ``extra["dimension_pairs"][p]``.
    Metrics: marginal_entropy_<t>, covariance_penalty_<t> for every transform (nats; the penalty of
    the criterion), marginal_entropy and covariance_penalty for the method's own transform,
    rankme_embedding, rankme_features, embedding_std, n_images, embedding_dim.
    """
    if not 2 <= n_images <= len(source):
        raise UserError(f"n_images must lie in [2, {len(source)}] (the split's size), got {n_images}")
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(len(source), generator=generator)[:n_images].sort().values
    embedding, labels = extract_features(network, source, indices, batch_size, output="embedding")
    features, _ = extract_features(network, source, indices, batch_size, output="features")
    pairs = dimension_pairs(embedding.shape[1], n_pairs, seed)
    stats = transformed_statistics(embedding, transforms)
    metrics: dict[str, float] = {}
    for t in transforms:
        metrics[f"marginal_entropy_{t}"] = stats[t]["marginal_entropy"]
        metrics[f"covariance_penalty_{t}"] = stats[t]["covariance_penalty"]
    own = get_method(method).transform
    own_stats = stats[own] if own in stats else transformed_statistics(embedding, (own,))[own]
    metrics.update(marginal_entropy=own_stats["marginal_entropy"], covariance_penalty=own_stats["covariance_penalty"],
                   rankme_embedding=rankme(embedding), rankme_features=rankme(features),
                   embedding_std=embedding.std(dim=0).mean().item(), n_images=n_images,
                   embedding_dim=embedding.shape[1])
    extra = {"image_indices": indices.tolist(), "labels": labels.tolist(),
             "dimension_pairs": [list(p) for p in pairs], "method_transform": own,
             "coordinates": {t: pair_coordinates(embedding, pairs, t) for t in transforms},
             "per_dimension_entropy": {t: stats[t]["per_dimension_entropy"] for t in transforms}}
    return metrics, extra


def diagnose_checkpoint(checkpoint: str | Path, results_dir: str | Path, *, method: str | None = None,
                        arm: str | None = None, epoch: int | None = None, dataset: str | None = None,
                        data_root: str | Path | None = None, n_images: int = 2048, n_pairs: int = 8, seed: int = 0,
                        device: str = "auto", workers: int = 8) -> Path:
    """Diagnostics of a checkpoint's embeddings on its dataset's test split, as a kind=diagnostics result."""
    if not 1 <= n_pairs <= MAX_DIAGNOSTIC_PAIRS:
        raise UserError(f"n_pairs must lie in [1, {MAX_DIAGNOSTIC_PAIRS}] (each pair stores the 2-D samples of "
                        f"every image in the result file), got {n_pairs}")
    check_writable_folder(results_dir, "results folder")
    started = utc_now()
    loaded = load_checkpoint(checkpoint, method, device, arm, epoch)
    evaluation = open_evaluation_data(loaded, dataset, data_root, None, workers)
    context = loaded.context
    metrics, extra = diagnose_network(loaded.network, evaluation.test, context.method, n_images, n_pairs, seed)
    path = Path(results_dir) / result_filename("diagnostics", context.method, context.arm, evaluation.name,
                                               context.epoch, None, seed, context.config_hash)
    write_result(path, kind="diagnostics", method=context.method, arm=context.arm, criterion=context.criterion,
                 epoch=context.epoch, label_fraction=None, seed=seed, dataset=evaluation.name, metrics=metrics,
                 extra={**context.extra, **extra, "split": "test"}, config=context.config,
                 checkpoint=context.checkpoint, started=started, device=network_device(loaded.network))
    print(f"[e2mc] diagnostics of {checkpoint}: RankMe {metrics['rankme_embedding']:.1f}, marginal entropy "
          f"{metrics['marginal_entropy']:.4f} nats -> {path}")
    return path
