"""The notebooks in notebooks/, executed by papermill on the small results fixture."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from e2mc import claims, notebook_io, tables
from test_plots import FIXTURE, assert_pdf, assert_png

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TABLES = ("ablations", "alternative_criteria", "claims", "main_results", "paired_comparison", "training_dynamics")


def _kernel_runs_this_interpreter() -> bool:
    """Whether the "python3" kernelspec starts sys.executable: jupyter_client swaps a bare
    python / python3 / python3.X in argv for the interpreter that launches the kernel."""
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return argv0 in bare or Path(argv0).resolve() == Path(sys.executable).resolve()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """"python3", made to start this interpreter: the venv's own kernelspec (share/jupyter under
    sys.prefix, installed with ipykernel) normally does; if another one shadows it, a kernelspec for
    sys.executable is installed into a temporary JUPYTER_PATH for these tests."""
    saved = os.environ.get("JUPYTER_PATH")
    if not _kernel_runs_this_interpreter():
        prefix = tmp_path_factory.mktemp("jupyter")
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3"],
                       check=True, capture_output=True)
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(prefix / "share" / "jupyter"), *filter(None, [saved])])
    assert _kernel_runs_this_interpreter()
    yield "python3"
    if saved is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = saved


def _stream_text(notebook) -> str:
    return "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_python3_kernel_is_this_interpreter(kernel, tmp_path):
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable); "
                                                                      "print(sys.prefix)")])
    nbformat.write(probe, tmp_path / "probe.ipynb")
    executed = pm.execute_notebook(str(tmp_path / "probe.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=kernel,
                                   progress_bar=False)
    assert _stream_text(executed).split() == [sys.executable, sys.prefix]


@pytest.mark.parametrize("name", ["fig2_marginals", "fig6_epochs", "tables"])
def test_notebooks_have_a_papermill_parameters_cell(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    defaults = {}
    exec(cells[0].source, {}, defaults)  # plain assignments of literals
    assert defaults["results_dir"] == "results/mini" and defaults["output_dir"] is None
    assert defaults["formats"] == ["png", "pdf"]
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")  # committed clean


def test_fig2_notebook(kernel, tmp_path):
    pm.execute_notebook(str(NOTEBOOKS / "fig2_marginals.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=kernel,
                        parameters={"results_dir": str(FIXTURE), "output_dir": str(tmp_path / "figs"),
                                    "pair": 1}, progress_bar=False)
    assert_png(tmp_path / "figs" / "fig2_marginals.png")
    assert_pdf(tmp_path / "figs" / "fig2_marginals.pdf")


def test_fig6_notebook_from_the_repo_root_with_relative_paths(kernel, tmp_path):
    """As a user types it: papermill notebooks/fig6_epochs.ipynb out.ipynb -p results_dir <relative>."""
    executed = pm.execute_notebook("notebooks/fig6_epochs.ipynb", str(tmp_path / "out.ipynb"), kernel_name=kernel,
                                   parameters={"results_dir": str(FIXTURE.relative_to(ROOT)),
                                               "output_dir": str(tmp_path / "figs"), "formats": ["pdf", "png"]},
                                   cwd=str(ROOT), progress_bar=False)
    assert_png(tmp_path / "figs" / "fig6_epochs.png")
    assert_pdf(tmp_path / "figs" / "fig6_epochs.pdf")
    assert f"92 result files from {FIXTURE}" in _stream_text(executed)
    assert any(o.get("data", {}).get("image/png") for o in executed.cells[-1].outputs)  # the figure is shown


def test_tables_notebook_writes_the_library_tables(kernel, tmp_path):
    pm.execute_notebook(str(NOTEBOOKS / "tables.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=kernel,
                        parameters={"results_dir": str(FIXTURE), "output_dir": str(tmp_path / "tables"),
                                    "formats": ["png"]}, progress_bar=False)
    frame = notebook_io.load_results(FIXTURE)
    made = {"main_results": tables.main_results(frame), "ablations": tables.ablations(frame),
            "alternative_criteria": tables.alternative_criteria(frame),
            "paired_comparison": tables.paired_comparison(frame),
            "training_dynamics": tables.training_dynamics(frame),
            "claims": tables.claims_table(claims.claims_ledger(frame, converged_base=False),
                                          f"results/{FIXTURE.name}")}
    written = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert written == sorted([f"{t}.{ext}" for t in TABLES for ext in ("md", "tex")] + ["training_dynamics.png"])
    for name, table in made.items():
        assert (tmp_path / "tables" / f"{name}.md").read_text() == table.to_markdown()
        assert (tmp_path / "tables" / f"{name}.tex").read_text() == table.to_latex()
    assert_png(tmp_path / "tables" / "training_dynamics.png")


def test_notebook_on_a_missing_directory_fails_with_its_name(kernel, tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="results directory results/absent not found"):
        pm.execute_notebook(str(NOTEBOOKS / "fig6_epochs.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=kernel,
                            parameters={"results_dir": "results/absent", "output_dir": str(tmp_path / "figs")},
                            cwd=str(tmp_path), progress_bar=False)
    assert not (tmp_path / "figs").exists()


def test_preregistered_notebook_reports_progress_until_every_seed_is_there(kernel, tmp_path):
    """On a folder without the study's seeds the notebook tests nothing and says which seeds it has."""
    pm.execute_notebook(str(NOTEBOOKS / "preregistered.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=kernel,
                        parameters={"results_dir": str(FIXTURE), "output_dir": str(tmp_path / "figs")},
                        progress_bar=False)
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == ["preregistered_study.md"]
    text = (tmp_path / "figs" / "preregistered_study.md").read_text()
    assert "in progress" in text and "e2mc: 0 of 8 (none)" in text
