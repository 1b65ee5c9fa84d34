"""Imports run one way: objectives, methods and the configuration below the training loop, the loop
below evaluation and the launchers; figures and tables side by side. Read from the source with ast,
so lazy imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "e2mc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every e2mc module the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("e2mc")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("e2mc"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from e2mc import plots
    return found


GRAPH = {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}


def reaches(start: str, target: str) -> list[str] | None:
    """An import path from ``start`` to ``target`` (a module or a package's submodule), or None."""
    stack, seen = [[start]], {start}
    while stack:
        path = stack.pop()
        for name in GRAPH.get(path[-1], ()):
            if name == target or name.startswith(target + "."):
                return path + [name]
            if name in GRAPH and name not in seen:
                seen.add(name)
                stack.append(path + [name])
    return None


# Below the training loop: what a run is built from. Evaluation sits beside training, above these.
BELOW_TRAINING = ["e2mc.checks", "e2mc.heads", "e2mc.criterion", "e2mc.distributed", "e2mc.objectives", "e2mc.models", "e2mc.methods",
                  "e2mc.criteria", "e2mc.config", "e2mc.eval_settings", "e2mc.optim", "e2mc.batches", "e2mc.diagnostics",
                  "e2mc.checkpoints", "e2mc.build", "e2mc.naming", "e2mc.results", "e2mc.data", "e2mc.provenance",
                  "e2mc.frames", "e2mc.plots", "e2mc.tables", "e2mc.claims", "e2mc.figure_style",
                  "e2mc.notebook_io", "e2mc.converged_plots", "e2mc.converged_tables", "e2mc.registry",
                  "e2mc.meter", "e2mc.runlock", "e2mc.releases"]
EVALUATION = sorted(m for m in GRAPH if m.startswith("e2mc.evaluation"))


def test_the_graph_sees_the_package():
    assert {"e2mc.train", "e2mc.runs", "e2mc.methods.vicreg", "e2mc.evaluation.runner"} <= set(GRAPH)
    assert reaches("e2mc.runs", "e2mc.train") is not None  # the check can find a real import


@pytest.mark.parametrize("module", BELOW_TRAINING + EVALUATION)
def test_nothing_below_or_beside_the_loop_imports_it(module):
    assert reaches(module, "e2mc.train") is None, f"{module} imports the training loop: {reaches(module, 'e2mc.train')}"


@pytest.mark.parametrize("module", BELOW_TRAINING)
def test_the_bottom_layers_do_not_import_evaluation_or_launchers(module):
    for upper in ("e2mc.evaluation", "e2mc.runs", "e2mc.experiments", "e2mc.reproduce", "e2mc.reports", "e2mc.launcher",
                  "e2mc.cluster"):
        assert reaches(module, upper) is None, f"{module} reaches {upper}: {reaches(module, upper)}"


@pytest.mark.parametrize("loop", ["e2mc.train", "e2mc.epoch"])
def test_the_training_loop_does_not_import_evaluation(loop):
    assert reaches(loop, "e2mc.evaluation") is None


def test_one_epoch_sits_below_the_run_it_belongs_to():
    """The steps of an epoch know nothing of setting a run up or of its run folder's place."""
    assert reaches("e2mc.epoch", "e2mc.train") is None and reaches("e2mc.epoch", "e2mc.runfolder") is None


@pytest.mark.parametrize("figures", ["e2mc.plots", "e2mc.converged_plots", "e2mc.figure_style"])
@pytest.mark.parametrize("tables", ["e2mc.tables", "e2mc.converged_tables"])
def test_plots_and_tables_do_not_import_each_other(figures, tables):
    assert reaches(figures, tables) is None
    assert reaches(tables, figures) is None


def test_objectives_and_the_criterion_know_no_method():
    for module in [m for m in GRAPH if m.startswith("e2mc.objectives")] + ["e2mc.criterion"]:
        assert reaches(module, "e2mc.methods") is None and reaches(module, "e2mc.config") is None, module


def test_the_claims_rules_read_frames_not_figures_or_tables():
    assert reaches("e2mc.claims", "e2mc.plots") is None and reaches("e2mc.claims", "e2mc.tables") is None


def test_the_data_layer_imports_no_method():
    """The methods build on the data layer's view recipes; the data layer takes a method as an argument
    (its ``mini_views`` / ``imagenet_views``) instead of importing the registry back up."""
    for module in [m for m in GRAPH if m.startswith("e2mc.data")]:
        assert reaches(module, "e2mc.methods") is None, f"{module} imports the methods: {reaches(module, 'e2mc.methods')}"


# e2mc modules imported inside a function, each only because it needs the `repro` extra (pandas,
# matplotlib, papermill, submitit), which the core install, registering every command, lacks.
OPTIONAL_EXTRA = {("e2mc.__main__", "e2mc.launcher"), ("e2mc.reports", "e2mc.notebook_io"),
                  ("e2mc.reports", "e2mc.tables")}


def test_no_e2mc_import_hides_inside_a_function():
    """A lazy import would hide an arrow of the graph from whoever reads the top of the file."""
    hidden = set()
    for path in PACKAGE.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("e2mc"):
                        hidden |= {(module_name(path), f"e2mc.{a.name}" if node.module == "e2mc" else node.module)
                                   for a in node.names}
                    elif isinstance(node, ast.Import):
                        hidden |= {(module_name(path), a.name) for a in node.names if a.name.startswith("e2mc")}
    assert hidden == OPTIONAL_EXTRA
