"""The SSL methods E2MC continues, one module each, and the registry every other module asks.

    from e2mc.methods import get_method, method_names
    vicreg = get_method("vicreg")
    network = vicreg.build_network("convnet", expander=(512, 512, 512))

To add a method, write ``e2mc/methods/<name>.py`` (a :class:`Method` subclass, registered) and
import it below; docs/extending.md lists the rest.
"""
from e2mc.methods.base import CriterionViews, Method, Release, get_method, method_names, register, unregister

# The one list of methods: importing a module registers it (order = order in figures and tables).
from e2mc.methods import vicreg, swav, simsiam, barlowtwins  # noqa: E402,F401  isort: skip


def build_model(method: str, backbone: str = "resnet50", in_channels: int | None = None,
                backbone_widths=None, **head_sizes):
    """``method``'s network on the named backbone; ``head_sizes`` default to the official sizes.

    Example: ``build_model("vicreg", "convnet", expander=(1024, 1024, 1024))``.
    """
    return get_method(method).build_network(backbone, in_channels, backbone_widths, **head_sizes)


__all__ = ["CriterionViews", "Method", "Release", "build_model", "get_method", "method_names", "register",
           "unregister"]
