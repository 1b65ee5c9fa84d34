"""What an SSL method is to this repository, and the registry of methods.

Everything specific to one method lives in its module (``e2mc/methods/<name>.py``), as one
:class:`Method` subclass registered with :func:`register`: its network heads, its objective,
how the network's outputs reach that objective and the added criterion, its augmentations, the
compact transform and coefficients the paper pairs with it, the key layout of its official
release, and its label in figures. Every other module asks :func:`get_method`.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from e2mc.data.recipes import ViewRecipe
from e2mc.errors import UserError
from e2mc.models import build_backbone
from e2mc.registry import Registry

RESNET_ROOTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


@dataclass
class CriterionViews:
    """The embeddings an added criterion sees, each (N, D): the two views E2MC acts on, and the
    further crops (SwAV's small crops) that a criterion consuming every crop (MMCR) averages too."""

    first: torch.Tensor
    second: torch.Tensor
    others: list[torch.Tensor] = field(default_factory=list)

    def all(self) -> list[torch.Tensor]:
        return [self.first, self.second, *self.others]


@dataclass(frozen=True)
class Release:
    """An official checkpoint of a method: the file, where its repository publishes it, what it holds."""

    file: str
    url: str
    holds: str                       # e.g. "backbone, expander, LARS state" (for the docs)


class Method:
    """One SSL method. Subclasses set the class attributes and override what differs.

    Networks return a dict from ``network(x)`` with at least ``"features"`` (N, F), the backbone
    output that probes read, and ``"embedding"`` (N, D), what E2MC acts on.
    """

    name: str                                # the configuration's ``method``
    label: str                               # in figures and tables
    network_class: type[nn.Module]           # built as network_class(backbone, feature_dim, **heads)
    objective_class: type[nn.Module]         # the method's own loss, built from ``loss.params``
    transform: str                           # compact transform the paper pairs with it: sigmoid | gaussian_cdf
    paper_coefficients: tuple[float, float]  # the paper's (lambda_ent, lambda_cov) for this method
    imagenet_views: tuple[ViewRecipe, ...]   # one recipe per view
    mini_views: tuple[ViewRecipe, ...]       # the grey 28 px versions (Fashion-MNIST)
    releases: tuple[Release, ...] = ()
    # Continue with the optimizer state a release ships, where the E2MC authors' code restores it.
    restore_release_optimizer: bool = False
    in_paper: bool = True                    # one of the methods the paper continues
    objective_input: str = "embedding"       # the network output the default loss gives the objective

    # --- building ---------------------------------------------------------------------------
    def head_options(self) -> list[str]:
        """The head-size keywords the network takes (``model.heads`` in a configuration)."""
        return [p for p in inspect.signature(self.network_class.__init__).parameters
                if p not in ("self", "backbone", "feature_dim")]

    def build_network(self, backbone: str = "resnet50", in_channels: int | None = None,
                      backbone_widths: Sequence[int] | None = None, **heads) -> nn.Module:
        """The method's network on the named backbone; ``heads`` default to the official sizes."""
        unknown = sorted(set(heads) - set(self.head_options()))
        if unknown:
            raise TypeError(f"{self.name} does not take head size(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(self.head_options())}")
        trunk, feature_dim = build_backbone(backbone, in_channels, backbone_widths)
        return self.network_class(trunk, feature_dim, **heads)

    def build_objective(self, **params) -> nn.Module:
        try:
            return self.objective_class(**params)
        except TypeError as e:
            raise UserError(f"loss.params does not fit {self.objective_class.__name__}: {e}") from None

    # --- one training step ------------------------------------------------------------------
    def before_step(self, network: nn.Module) -> None:
        """Called before every forward pass of training (SwAV re-normalises its prototypes)."""

    def forward(self, network: nn.Module, views: list[torch.Tensor]):
        """Run the network on every view in one call. By default each view is its own batch
        (BatchNorm statistics per view, as the reference code of VICReg and SimSiam)."""
        return [network(v) for v in views]

    def loss(self, outputs, batch: int, objective: nn.Module, network: nn.Module
             ) -> tuple[dict[str, torch.Tensor], CriterionViews]:
        """The objective's terms (a dict with ``"loss"``) and what the added criterion sees, from the
        outputs of :meth:`forward` on views of ``batch`` images each. By default two views: the
        objective takes each view's :attr:`objective_input` output, the criterion their embeddings."""
        first, second = outputs
        return (objective(first[self.objective_input], second[self.objective_input]),
                CriterionViews(first["embedding"], second["embedding"]))

    # --- official releases ------------------------------------------------------------------
    def official_key(self, key: str) -> str:
        """Our state-dict key for a key of the official release (``module.`` already removed).
        By default bare ResNet keys go under ``backbone.``; the rest pass through unchanged."""
        return "backbone." + key if key.startswith(RESNET_ROOTS) else key

    def release(self, file_name: str) -> Release | None:
        return next((r for r in self.releases if r.file == file_name), None)

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add a method to the registry (each method module calls it once, on import)."""
    return _METHODS.add(method)


def unregister(name: str) -> Method:
    """Remove a method from the registry (for a test that registered its own); returns it."""
    return _METHODS.remove(name)


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (the paper's three first)."""
    return _METHODS.names()


def get_method(name: str) -> Method:
    """The registered method ``name``; a UserError naming the choices otherwise."""
    return _METHODS.get(name)
