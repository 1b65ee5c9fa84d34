"""Evaluating checkpoints: which network, which data, which protocols, and one result file per evaluation.

* :func:`load_checkpoint` opens one of our training checkpoints (method, configuration and epoch come
  from the file) or an official release (``method`` given).
* :func:`evaluate_network` runs the protocols of an :class:`EvaluationPlan` (linear probe, fine-tuning,
  transfer) for every label fraction and seed and writes one JSON per evaluation (e2mc.results schema).
* :func:`evaluate_checkpoint`, :func:`sweep` (every ``checkpoint-epochNNN.pt`` of a run) and
  :func:`make_epoch_probe_hook` (inside training) are the three ways in.
* :func:`diagnose_checkpoint` writes the embedding diagnostics of a checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import nn

from e2mc import checkpoints, data, releases
from e2mc.build import build_network, check_finite_weights, load_initial_weights, load_model_weights, resolve_device
from e2mc.config import LABEL_FRACTIONS, PROTOCOLS, Config, ConfigError, EvalConfig, config_from_dict, load_config
from e2mc.criteria import criterion_record
from e2mc.data.registry import RELEASE_DATASET, EvaluationData, fashion_mnist_data, get_dataset, imagenet_data  # noqa: F401
from e2mc.diagnostics import dimension_pairs, pair_coordinates, rankme, transformed_statistics
from e2mc.errors import UserError, check_writable_folder
from e2mc.methods import build_model, get_method, method_names
from e2mc.naming import infer_arm
from e2mc.evaluation.finetune import FinetuneSettings, finetune, swav_finetune_settings
from e2mc.evaluation.linear import (AUTHORS_TRANSFER_PROBE, PAPER_IMAGE_PROBE, ProbeSettings,
                                    train_linear_on_images, train_linear_probe)
from e2mc.evaluation.sources import ImageSource, extract_features, input_channels, network_device
from e2mc.evaluation.transfer import num_classes_of, transfer_sources
from e2mc.provenance import utc_now
from e2mc.results import config_hash, existing_result, result_filename, write_result

EPOCH_CHECKPOINT = re.compile(r"checkpoint-epoch(\d+)\.pt")
TRANSFER_PROTOCOLS = ("reglog", "pooled")  # see EvaluationPlan.transfer_protocol


# ----------------------------------------------------------------------------- what is evaluated

@dataclass
class ResultContext:
    """The fields every result of one network shares (see e2mc.results)."""

    method: str
    arm: str
    epoch: int
    config: dict | None = None
    checkpoint: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def criterion(self) -> dict:
        return criterion_record(self.config)

    @property
    def config_hash(self) -> str | None:
        return config_hash(self.config)

    @property
    def trained_on(self) -> str:
        """The dataset the network was (pre-)trained on: its configuration's, ImageNet for a release."""
        return ((self.config or {}).get("data") or {}).get("dataset") or RELEASE_DATASET


@dataclass
class LoadedCheckpoint:
    """A network ready for evaluation (eval mode, on its device) and what its results record."""

    network: nn.Module
    context: ResultContext
    dataset: str                     # the dataset it was trained on (a name in e2mc.data.registry)
    data_root: str | None            # where its training data was (the evaluation default)


def evaluation_root(cfg: Config) -> str | None:
    """Where a run's evaluation data are: its ``data.root``, except that ImageNet training reads
    ``<root>/train`` while evaluation needs ``<root>`` (train/ and val/)."""
    return get_dataset(cfg.data.dataset).evaluation_root(cfg.data.root)


def load_checkpoint(path: str | Path, method: str | None = None, device: str | torch.device = "auto",
                    arm: str | None = None, epoch: int | None = None, run_config: dict | None = None
                    ) -> LoadedCheckpoint:
    """Open a checkpoint for evaluation.

    Our training checkpoints (``"format": "e2mc-train-v1"``) carry method, configuration and epoch;
    ``method``, if given, must agree. Anything else is read as an official release of ``method``
    (required then) on a ResNet-50 (``e2mc.releases.load_official``), evaluated on ImageNet.
    ``arm`` and ``epoch`` override what is inferred: the arm from the configuration
    (:func:`infer_arm`), the epoch from the file, except that a run from scratch is the base model
    of continued training, epoch 0 (its own epoch count goes to ``extra["pretrain_epochs"]``).
    The network is in eval mode, on ``device``, in the memory layout its run trained in
    (``train.channels_last``; channels_last for releases), so evaluating a saved epoch gives what the
    per-epoch hook measured in training. With ``run_config`` (the configuration of the run folder the
    file lies in) the file must be that run's checkpoint of ``epoch``: same method and arm, and that
    epoch recorded in it; a file another run wrote is refused rather than labelled as this run's.
    """
    path = Path(path)
    if epoch is not None and epoch < 0:  # refused now, not after the evaluation when its result is written
        raise UserError(f"epoch must be >= 0 (epochs of continued pre-training), got {epoch}")
    device = resolve_device(device) if isinstance(device, str) else device
    state = checkpoints.load(path)
    extra: dict[str, Any] = {}
    if run_config is not None:
        _check_of_run(path, state, run_config, epoch)
    if checkpoints.training_state(state, path) is not None:
        if method is not None and method != state["method"]:
            raise UserError(f"{path} holds a {state['method']} network, not {method}; drop --method for our "
                             "checkpoints (they say what they hold)")
        config = state["config"]
        try:
            cfg = config_from_dict(config)
        except ConfigError as e:
            raise checkpoints.CheckpointError(f"{path} holds a configuration this version cannot read: {e}") from None
        network = build_network(cfg)
        load_model_weights(network, state, path)
        file_epoch = int(state["epoch"])
        if not cfg.train.init:
            extra["pretrain_epochs"] = file_epoch
            file_epoch = 0
        context = ResultContext(cfg.method, arm or infer_arm(config), file_epoch if epoch is None else epoch,
                                config, str(path), extra)
        loaded = LoadedCheckpoint(network, context, cfg.data.dataset, evaluation_root(cfg))
        channels_last = cfg.train.channels_last  # evaluate in the layout the run trained in
    else:
        if method is None:
            raise UserError(f"{path} is not one of our training checkpoints; give --method (one of "
                             f"{', '.join(method_names())}) to read it as an official release")
        network = build_model(method, "resnet50")
        report = releases.load_official(state, method, network, source=str(path))
        if report.epoch is not None:
            extra["release_epochs"] = report.epoch
        context = ResultContext(method, arm or "base", 0 if epoch is None else epoch, None, str(path), extra)
        loaded = LoadedCheckpoint(network, context, RELEASE_DATASET, None)
        channels_last = True
    check_finite_weights(loaded.network, str(path))
    loaded.network.to(device).eval()
    if channels_last:
        loaded.network.to(memory_format=torch.channels_last)
    return loaded


# ----------------------------------------------------------------------------- data

def evaluation_data(dataset: str, root: str | Path | None, subset_dir: str | Path | None = None,
                    workers: int = 8) -> EvaluationData:
    return get_dataset(dataset).evaluation_data(root, subset_dir, workers)


def open_evaluation_data(loaded: LoadedCheckpoint, dataset: str | None = None, root: str | Path | None = None,
                         subset_dir: str | Path | None = None, workers: int = 8) -> EvaluationData:
    """The evaluation data for a checkpoint: ``dataset`` and ``root`` default to those it was trained on.
    Raises ValueError when the network's input channels do not fit the dataset's images."""
    dataset = dataset or loaded.dataset
    expected = get_dataset(dataset).channels
    channels = input_channels(loaded.network)
    if channels != expected:
        raise UserError(f"the network takes {channels}-channel images but {dataset} has {expected}; evaluate it "
                         f"on the dataset it was trained on ({loaded.dataset}), or on others through --transfer")
    return evaluation_data(dataset, root if root is not None else loaded.data_root, subset_dir, workers)


# ----------------------------------------------------------------------------- the protocols

@dataclass
class EvaluationPlan:
    """What to run. protocols: any of linear_probe, finetune, transfer. probe_on: "features" (the
    fast path on cached, standardised features) or "images" (the paper's ImageNet protocol:
    augmented images through the frozen backbone every epoch, :data:`PAPER_IMAGE_PROBE` unless
    ``probe`` is given); probe_overrides: fields replaced in those settings. finetune: settings for
    every fraction, or None for SwAV's per-fraction ones (:func:`swav_finetune_settings`);
    finetune_overrides: fields replaced in those. transfer: (name, root) pairs (see
    e2mc.evaluation.transfer). transfer_protocol: how the transfer datasets are probed: "reglog" (the
    authors' protocol: :class:`e2mc.evaluation.linear.RegLog` on the backbone's last feature map,
    trained on augmented images with :data:`AUTHORS_TRANSFER_PROBE`), "pooled" (the probe of
    ``probe_on`` on the pooled features, as the linear probe), or None: "reglog" when the probe runs
    on images (``probe_on="images"``), "pooled" when on cached features (``probe_on`` "features" or
    None, the transfer datasets' default); ``probe_overrides`` apply to either.
    extraction_batch_size: images per forward pass when encoding."""

    protocols: tuple[str, ...] = ("linear_probe",)
    label_fractions: tuple[float, ...] = LABEL_FRACTIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    probe: ProbeSettings | None = None
    probe_on: str | None = None
    probe_overrides: dict = field(default_factory=dict)
    finetune: FinetuneSettings | None = None
    finetune_overrides: dict = field(default_factory=dict)
    transfer: tuple[tuple[str, str], ...] = ()
    transfer_protocol: str | None = None
    extraction_batch_size: int = 512

    def __post_init__(self) -> None:
        self.protocols, self.seeds = tuple(self.protocols), tuple(int(s) for s in self.seeds)
        self.label_fractions = tuple(float(f) for f in self.label_fractions)
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise UserError(f"protocols must be among {', '.join(PROTOCOLS)}, got {list(self.protocols)}")
        bad = [f for f in self.label_fractions if not 0 < f <= 1]
        if bad or not self.label_fractions or not self.seeds:
            raise UserError(f"label fractions must lie in (0, 1] (e.g. 0.01 0.1 1.0) and seeds be given; "
                             f"got {list(self.label_fractions)} and {list(self.seeds)}")
        if self.probe_on not in (None, "features", "images"):
            raise UserError(f"probe_on must be 'features' or 'images' (or None: by dataset), got {self.probe_on!r}")
        if "transfer" in self.protocols and not self.transfer:
            raise UserError("the transfer protocol needs at least one dataset: --transfer NAME=ROOT, e.g. cifar10=/data")
        if self.transfer_protocol not in (None,) + TRANSFER_PROTOCOLS:
            raise UserError(f"transfer_protocol must be one of {', '.join(TRANSFER_PROTOCOLS)} (or None: reglog "
                             f"when probing on images, pooled on cached features), got {self.transfer_protocol!r}")

    @property
    def uses_own_data(self) -> bool:
        """Whether the plan evaluates on the pre-training dataset (linear probe or fine-tuning), not only transfer."""
        return "linear_probe" in self.protocols or "finetune" in self.protocols

    def for_dataset(self, dataset: str) -> "EvaluationPlan":
        """The plan with ``probe_on`` decided where it was left open, by the dataset the network was trained
        on: the authors' protocols on images for ImageNet models (the linear probe, and reglog for transfer),
        the fast cached-features probe for the mini models."""
        if self.probe_on is not None:
            return self
        return replace(self, probe_on=get_dataset(dataset).probe_on)

    def probe_settings(self) -> ProbeSettings:
        base = self.probe if self.probe is not None else (PAPER_IMAGE_PROBE if self.probe_on == "images"
                                                          else ProbeSettings())
        return replace(base, **self.probe_overrides)

    def transfer_protocol_name(self) -> str:
        """The transfer protocol this plan runs (``transfer_protocol``, or its default by ``probe_on``)."""
        if self.transfer_protocol is not None:
            return self.transfer_protocol
        return "reglog" if self.probe_on == "images" else "pooled"

    def transfer_settings(self) -> ProbeSettings:
        """Settings of the transfer probe: :data:`AUTHORS_TRANSFER_PROBE` for reglog, those of
        :meth:`probe_settings` for pooled; ``probe_overrides`` replaced in both."""
        if self.transfer_protocol_name() == "reglog":
            return replace(AUTHORS_TRANSFER_PROBE, **self.probe_overrides)
        return self.probe_settings()

    def finetune_settings(self, fraction: float) -> FinetuneSettings:
        base = self.finetune if self.finetune is not None else swav_finetune_settings(fraction)
        return replace(base, **self.finetune_overrides)


def plan_from_config(section: EvalConfig, dataset: str | None) -> EvaluationPlan:
    """The evaluation a configuration's ``eval`` section describes, for a model trained on ``dataset``.

    Unset probe and fine-tuning settings keep their protocols' defaults. ``eval.probe.on`` unset means
    the authors' protocol on images for ImageNet and the fast cached-features probe for Fashion-MNIST
    (decided when the evaluation data are known if ``dataset`` is None). ``eval.transfer.protocol``
    unset means reglog when the probe runs on images, pooled otherwise (see :class:`EvaluationPlan`)."""
    probe_on = section.probe.on or (None if dataset is None else get_dataset(dataset).probe_on)
    probe = {k: v for k, v in dataclasses.asdict(section.probe).items() if k != "on" and v is not None}
    tune = {k: v for k, v in dataclasses.asdict(section.finetune).items() if v is not None}
    return EvaluationPlan(tuple(section.protocols), tuple(section.label_fractions), tuple(section.seeds),
                          probe_on=probe_on, probe_overrides=probe, finetune_overrides=tune,
                          transfer=tuple(section.transfer.datasets.items()),
                          transfer_protocol=section.transfer.protocol)


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


def _check_of_run(path: Path, state: Any, run_config: dict, epoch: int | None) -> None:
    """Refuse ``path`` unless it is the checkpoint of ``epoch`` of the run configured by ``run_config``."""
    expected = f"{run_config['method']} {infer_arm(run_config)} at epoch {epoch}"
    if not checkpoints.is_training_checkpoint(state):
        raise ValueError(f"{path} is not a checkpoint written by the run in {path.parent} (that run is "
                         f"{run_config['method']} {infer_arm(run_config)}); move the file out of the run folder")
    found = f"{state['method']} {infer_arm(state['config'])} at epoch {state['epoch']}"
    if found != expected:
        raise ValueError(f"{path} holds {found}, but the run in {path.parent} would have written {expected} there: "
                         "another run's file was copied in; move it out of the run folder")


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
                        load_initial_weights(str(source), cfg.method, initial)
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
