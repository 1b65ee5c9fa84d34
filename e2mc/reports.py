"""Reports of a reproduction, beside the figures (plots.py) and tables (tables.py): the notebooks
executed with papermill, the README's table blocks refreshed from the tables they write, and a
Markdown comparison of a re-run with a reference results folder.

    python -m e2mc notebooks --results results/mini [--readme README.md]
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from e2mc.errors import UserError
from e2mc.experiments import PLATEAU_DIR, VARIANTS_DIR
from e2mc.provenance import REPO_ROOT
from e2mc.results import load

NOTEBOOKS = ("fig2_marginals", "fig6_epochs", "tables")
# on the results of a part with a plateau sweep or variants (the converged part), also:
CONVERGED_NOTEBOOKS = ("converged", "preregistered")


def compare(reference_dir: Path, rerun_dir: Path) -> str:
    """A Markdown table of the re-run's final linear-probe top-1 beside the reference folder's, for
    every (method, arm, label fraction, seed) the re-run has."""
    def final(frame):
        probes = frame[frame.kind == "linear_probe"]
        last = probes.groupby(["method", "arm"]).epoch.transform("max")
        return probes[probes.epoch == last].set_index(["method", "arm", "label_fraction", "seed"])["top1"]

    rerun, reference = final(load(rerun_dir)), final(load(reference_dir))
    lines = [f"| method | arm | labels | seed | top-1 {reference_dir} | top-1 {rerun_dir} (re-run) |",
             "|---|---|---|---|---|---|"]
    for key, value in rerun.sort_index().items():
        method, arm, fraction, seed = key
        ref = f"{reference[key]:.2f}" if key in reference.index else "not in reference"
        lines.append(f"| {method} | {arm} | {100 * fraction:g}% | {seed} | {ref} | {value:.2f} |")
    return "\n".join(lines)


def execute_notebook(notebook: Path, output: Path, parameters: dict) -> None:
    """Run one notebook with papermill, its kernel talking over local IPC sockets in a private
    temporary folder: nothing listens on TCP, so the kernel has no unencrypted transport to warn about."""
    import papermill  # the notebook tools are needed by this command only
    from jupyter_client import AsyncKernelManager

    with tempfile.TemporaryDirectory(prefix="e2mc-kernel-") as sockets:
        class IPCKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs):
                super().__init__(transport="ipc", ip=str(Path(sockets) / "kernel"), **kwargs)

        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                   cwd=str(REPO_ROOT), progress_bar=False, kernel_manager_class=IPCKernelManager)


def run_notebooks(results_dir: Path, executed_dir: Path | None = None, readme: Path | None = None,
                  only: tuple[str, ...] = ()) -> None:
    """Execute every notebook with papermill on ``results_dir`` (with ``only``, just those of them);
    figures go where notebook_io.resolve_io_dirs says. With ``readme``, its table blocks are then
    refreshed from the tables written (:func:`e2mc.tables.sync_readme_tables`)."""
    # pandas, matplotlib and papermill come with the [repro] extra: the core install, which registers this
    # command, must not need them to start.
    from e2mc import notebook_io, tables

    found, figures_dir = notebook_io.resolve_io_dirs(results_dir)
    converged = (found / PLATEAU_DIR).is_dir() or (found / VARIANTS_DIR).is_dir()
    names = NOTEBOOKS + (CONVERGED_NOTEBOOKS if converged else ())
    unknown = [name for name in only if name not in names]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: the notebooks of {results_dir} are {', '.join(names)}")
    executed_dir = executed_dir or Path(tempfile.mkdtemp(prefix="e2mc-notebooks-"))
    for name in (n for n in names if not only or n in only):
        print(f"[notebooks] {name} on {results_dir}", flush=True)
        execute_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", executed_dir / f"{name}.ipynb",
                         {"results_dir": str(results_dir)})
    print(f"[notebooks] executed copies in {executed_dir}", flush=True)
    if readme is not None:
        changed = tables.sync_readme_tables(readme, figures_dir.parent)  # every folder's blocks
        print(f"[notebooks] {readme}: " + (f"updated table(s) {', '.join(changed)}" if changed
                                            else "its tables already match"), flush=True)


def add_command(sub) -> None:
    """Register ``notebooks`` on the e2mc command line."""
    text = ("execute every notebook on a results folder with papermill, writing figures/<path under results/> "
            "(<results>/figures for a folder elsewhere)")
    p = sub.add_parser("notebooks", help=text, description=text)
    p.add_argument("--results", default="results/mini")
    p.add_argument("--readme", default=None,
                   help="also refresh the <!-- e2mc:table FOLDER/NAME --> blocks of this Markdown file from "
                        "figures/FOLDER/NAME.md")
    p.add_argument("--only", nargs="+", default=(), metavar="NOTEBOOK",
                   help="execute just these notebooks (e.g. preregistered while its study runs)")
    p.set_defaults(run=lambda args: run_notebooks(Path(args.results), readme=Path(args.readme) if args.readme else None,
                                                  only=tuple(args.only)) or 0)
