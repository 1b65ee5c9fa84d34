"""What an evaluation runs: the protocols, label fractions and seeds, and each protocol's settings.

An :class:`EvaluationPlan` is the evaluation settings of a configuration (:class:`e2mc.eval_settings.EvalConfig`,
:func:`plan_from_config`) resolved for one network: which probe (on cached features or on images) and the
protocols' full settings (:class:`ProbeSettings`, :class:`FinetuneSettings`) with the configured values replaced.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from e2mc.data.registry import get_dataset
from e2mc.eval_settings import LABEL_FRACTIONS, EvalConfig, check_setting, check_transfer
from e2mc.evaluation.finetune import FinetuneSettings, swav_finetune_settings
from e2mc.evaluation.linear import AUTHORS_TRANSFER_PROBE, PAPER_IMAGE_PROBE, ProbeSettings


@dataclass
class EvaluationPlan:
    """What to run. protocols: any of linear_probe, finetune, transfer. probe_on: "features" (the
    fast path on cached, standardised features) or "images" (the paper's ImageNet protocol:
    augmented images through the frozen backbone every epoch, :data:`PAPER_IMAGE_PROBE` unless
    ``probe`` is given); probe_overrides: fields replaced in those settings. finetune: settings for
    every fraction, or None for SwAV's per-fraction ones (:func:`swav_finetune_settings`);
    finetune_overrides: fields replaced in those. transfer: (name, root) pairs (see
    e2mc.evaluation.transfer). transfer_protocol: how the transfer datasets are probed: "reglog" (the
    authors' protocol: :class:`e2mc.evaluation.image_probe.RegLog` on the backbone's last feature map,
    trained on augmented images with :data:`AUTHORS_TRANSFER_PROBE`), "pooled" (the probe of
    ``probe_on`` on the pooled features, as the linear probe), or None: "reglog" when the probe runs
    on images (``probe_on="images"``), "pooled" when on cached features (``probe_on`` "features" or
    None, the transfer datasets' default); ``probe_overrides`` apply to either.
    extraction_batch_size: images per forward pass when encoding. Each value obeys the rule of the
    ``eval`` setting of its name (:func:`e2mc.eval_settings.check_setting`)."""

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
        # the rules of the eval section's settings of the same names (e2mc.eval_settings)
        for path, value in (("protocols", self.protocols), ("label_fractions", self.label_fractions),
                            ("seeds", self.seeds), ("probe.on", self.probe_on),
                            ("transfer.protocol", self.transfer_protocol), ("batch_size", self.extraction_batch_size)):
            check_setting(path, value)
        check_transfer(self.protocols, self.transfer)
        self.protocols, self.seeds = tuple(self.protocols), tuple(int(s) for s in self.seeds)
        self.label_fractions = tuple(float(f) for f in self.label_fractions)

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
    unset means reglog when the probe runs on images, pooled otherwise (see :class:`EvaluationPlan`).
    The section was checked when it was read (:func:`e2mc.eval_settings.check_eval`)."""
    probe_on = section.probe.on or (None if dataset is None else get_dataset(dataset).probe_on)
    probe = {k: v for k, v in dataclasses.asdict(section.probe).items() if k != "on" and v is not None}
    tune = {k: v for k, v in dataclasses.asdict(section.finetune).items() if v is not None}
    return EvaluationPlan(tuple(section.protocols), tuple(section.label_fractions), tuple(section.seeds),
                          probe_on=probe_on, probe_overrides=probe, finetune_overrides=tune,
                          transfer=tuple(section.transfer.datasets.items()),
                          transfer_protocol=section.transfer.protocol, extraction_batch_size=section.batch_size)
