"""Where the notebooks in ``notebooks/`` read results and write figures and tables: a results folder
as a frame that remembers its path, the learning-rate variants beside it, and the input and output
folders of a notebook run (``results/mini`` draws into ``figures/mini``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from e2mc.frames import REPRODUCE_HINT
from e2mc.results import load


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """:func:`e2mc.results.load` of ``results_dir``, which the frame remembers
    (``frame.attrs["results_dir"]``) so that a missing result names the directory."""
    frame = load(results_dir)
    frame.attrs["results_dir"] = str(results_dir)
    return frame


def repo_root() -> Path | None:
    """The source checkout this package is installed from (editable install), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def resolve_io_dirs(results_dir: str | Path, output_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The notebooks' paths: a relative ``results_dir`` is looked up in the current directory, then
    in the repository root (so a notebook run from ``notebooks/`` still finds ``results/mini``);
    a relative ``output_dir`` is taken against the same base. ``None`` means ``figures/<path under
    results/>`` for a folder under the repository's (or the current directory's) ``results/``, so
    results/mini draws into figures/mini, and ``<results_dir>/figures`` for any other folder: a results
    folder elsewhere that is also called ``mini`` never overwrites the committed figures/mini.
    Raises FileNotFoundError naming the directory when it is not there."""
    results_dir = Path(results_dir).expanduser()
    bases = [Path.cwd()]
    root = repo_root()
    if root is not None and root != Path.cwd().resolve():
        bases.append(root)
    if results_dir.is_absolute():
        bases = bases[:1]
    found = next((base for base in bases if (base / results_dir).is_dir()), None)
    if found is None:
        looked = results_dir if results_dir.is_absolute() else " or ".join(str(b / results_dir) for b in bases)
        raise FileNotFoundError(f"results directory {results_dir} not found (looked for {looked}); "
                                f"{REPRODUCE_HINT}, or pass -p results_dir <directory>")
    if output_dir is None:
        return found / results_dir, default_figures_dir(found / results_dir, [Path.cwd(), *([root] if root else [])])
    output_dir = Path(output_dir).expanduser()
    return found / results_dir, output_dir if output_dir.is_absolute() else found / output_dir


def default_figures_dir(results_dir: Path, bases: list[Path]) -> Path:
    """``<base>/figures/<path under <base>/results>`` for the first base whose results/ holds
    ``results_dir``; else ``<results_dir>/figures``."""
    resolved = results_dir.resolve()
    for base in bases:
        results_root = (base / "results").resolve()
        if resolved != results_root and resolved.is_relative_to(results_root):
            return base / "figures" / resolved.relative_to(results_root)
    return resolved / "figures"


def load_variants(results_dir: str | Path) -> pd.DataFrame | None:
    """The results of every ``<results_dir>/variants/<variant>/`` (e.g. ``lr3x``: another learning
    rate; see e2mc.experiments.Arm) in one frame with a ``variant`` column; None when there are none."""
    folder = Path(results_dir) / "variants"
    frames = [load_results(sub).assign(variant=sub.name) for sub in sorted(folder.iterdir())
              if sub.is_dir() and any(sub.rglob("*.json"))] if folder.is_dir() else []
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["results_dir"] = str(folder)
    return frame

