"""Stage 3 of the paper: evaluating pre-trained and continued checkpoints.

Linear probes on frozen features (fast path on cached features, or the paper's ImageNet protocol on
images), semi-supervised fine-tuning (SwAV's protocol), transfer to other datasets, evaluation after
every epoch of continued pre-training, and embedding diagnostics. Results are JSON files in the
schema of :mod:`e2mc.results`. Command line: ``python -m e2mc evaluate | sweep | diagnose``.
"""
from e2mc.evaluation.finetune import FinetuneSettings, finetune, swav_finetune_settings
from e2mc.evaluation.image_probe import train_linear_on_images
from e2mc.evaluation.linear import PAPER_IMAGE_PROBE, ProbeResult, ProbeSettings, topk_correct, train_linear_probe
from e2mc.data.registry import EvaluationData, fashion_mnist_data, imagenet_data
from e2mc.eval_settings import PROTOCOLS
from e2mc.evaluation.loading import LoadedCheckpoint, ResultContext, evaluation_data, load_checkpoint
from e2mc.evaluation.plan import EvaluationPlan, plan_from_config
from e2mc.evaluation.runner import (diagnose_checkpoint, diagnose_network, epoch_checkpoints, evaluate_checkpoint,
                                    evaluate_network, make_epoch_probe_hook, sweep)
from e2mc.evaluation.sources import (MINI_PROBE_RECIPE, DatasetImages, ImageSource, TensorImages, dataset_targets,
                                     extract_features)
from e2mc.evaluation.transfer import TRANSFER_DATASETS, transfer_dataset, transfer_sources, transfer_transforms

__all__ = [
    "FinetuneSettings", "finetune", "swav_finetune_settings",
    "PAPER_IMAGE_PROBE", "ProbeResult", "ProbeSettings", "topk_correct", "train_linear_on_images",
    "train_linear_probe",
    "PROTOCOLS", "EvaluationData", "EvaluationPlan", "LoadedCheckpoint", "ResultContext", "diagnose_checkpoint",
    "diagnose_network", "epoch_checkpoints", "evaluate_checkpoint", "evaluate_network", "evaluation_data",
    "fashion_mnist_data", "imagenet_data", "load_checkpoint", "make_epoch_probe_hook", "plan_from_config", "sweep",
    "MINI_PROBE_RECIPE", "DatasetImages", "ImageSource", "TensorImages", "dataset_targets", "extract_features",
    "TRANSFER_DATASETS", "transfer_dataset", "transfer_sources", "transfer_transforms",
]
