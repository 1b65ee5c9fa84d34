"""The pip package (core install and extras) and the conda environment (issue 20 items 19 and 20)."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What a practitioner who wants the criterion should not get (the `repro` extra brings them).
NOT_CORE = ("papermill", "submitit", "seaborn", "matplotlib", "jupyterlab", "pandas", "scipy", "sklearn")


def _names(specs) -> set[str]:
    return {canonicalize_name(Requirement(s).name) for s in specs}


def _extra_closure(extras: set[str]) -> set[str]:
    """The distribution names the project's extras bring, following `e2mc[...]` self-references."""
    names, todo, seen = set(), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in PROJECT["optional-dependencies"][extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == "e2mc":
                todo += list(req.extras)
            else:
                names.add(canonicalize_name(req.name))
    return names


def test_core_install_leaves_notebooks_figures_and_cluster_to_the_repro_extra():
    core = _names(PROJECT["dependencies"])
    assert core == {"torch", "torchvision", "numpy", "pyyaml", "tqdm"}
    repro = _extra_closure({"repro"})
    assert {"papermill", "jupyterlab", "submitit", "seaborn", "matplotlib", "pandas", "scipy"} <= repro
    assert repro | {"pytest"} <= _extra_closure({"dev"})  # `make install` (.[dev]) gets everything


def test_environment_yml_uses_conda_forge_only_and_installs_the_project_with_repro():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]  # no `pytorch` (no builds after 2.5), `nvidia` or `defaults`
    conda = [s for s in env["dependencies"] if isinstance(s, str)]
    assert any(re.fullmatch(r"python=3\.1[1-9]", s) for s in conda)  # tests read TOML with tomllib
    assert "pip" in conda
    assert not [s for s in conda if s.split("=")[0] in ("pytorch", "pytorch-cuda", "cudatoolkit")]
    pip = next(s for s in env["dependencies"] if isinstance(s, dict))["pip"]
    project = [s for s in pip if s.startswith("-e .")]
    assert len(project) == 1
    extras = set(re.fullmatch(r"-e \.\[([\w,]+)\]", project[0]).group(1).split(","))
    assert _extra_closure({"repro"}) <= _extra_closure(extras)
    # PyTorch pinned as `make install` pins it (TORCH_SPEC), so a cluster runs what the tests ran.
    torch_spec = re.search(r"^TORCH_SPEC\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert sorted(s for s in pip if not s.startswith("-e")) == sorted(torch_spec)


def _closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that ``requirements`` need, recursively (markers evaluated here,
    extras followed), read from this interpreter's site-packages."""
    found, todo = {}, [(r, frozenset()) for r in requirements]
    while todo:
        spec, _ = todo.pop()
        req = Requirement(spec)
        env = {**default_environment(), "extra": ""}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in found:
            continue
        dist = importlib.metadata.distribution(req.name)
        found[key] = dist
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or any(sub_req.marker.evaluate({**env, "extra": e}) for e in {"", *req.extras}):
                todo.append((str(Requirement(sub.split(";")[0])), frozenset()))
    unique = {canonicalize_name(d.metadata["Name"]): d for d in found.values()}
    return list(unique.values())


def test_wheel_in_a_venv_with_only_the_core_dependencies_runs_the_readme_example(tmp_path):
    """Builds the wheel, installs it into a fresh venv that holds only the core dependencies, and runs
    the README's "Add E2MC to your own model" example there.

    Installing torch (GBs) from an index in a test is neither fast nor possible offline, so the venv
    borrows the core dependencies from this interpreter: a fresh ``venv`` (no system site-packages)
    gets a ``.pth`` pointing at a folder of symlinks to exactly the distributions the wheel's core
    requirements need, found by following their ``Requires-Dist`` recursively (each distribution's
    top-level files, its dist-info included). Nothing else of this environment is visible there, so a
    module of an extra (papermill, seaborn, submitit, ...) imported by ``import e2mc`` would fail.
    """
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "e2mc", source / "e2mc", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True)
    wheel = next(wheels.glob("e2mc-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    core = tmp_path / "core"
    core.mkdir()
    with zipfile.ZipFile(wheel) as archive:  # the wheel's own core requirements (no extra markers)
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    core_requirements = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                         if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert _names(core_requirements) == _names(PROJECT["dependencies"])
    for dist in _closure(core_requirements):
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            target = Path(dist.locate_file(top))
            if top.startswith("..") or top == "__pycache__" or not target.exists() or (core / top).exists():
                continue
            (core / top).symlink_to(target)
    (site / "core-dependencies.pth").write_text(f"{core}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True)

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Add E2MC to your own model\s+```python\n(.*?)```", readme, re.S).group(1)
    script = (
        "import importlib.util, sys, torch\n"
        "backbone, projector = torch.nn.Flatten(), torch.nn.Linear(12, 16)\n"
        "x1, x2 = torch.randn(64, 3, 2, 2), torch.randn(64, 3, 2, 2)\n"
        "ssl_loss = torch.zeros(())\n"
        + example +
        "loss.backward()\n"
        "assert torch.isfinite(loss) and projector.weight.grad is not None\n"
        "import e2mc, e2mc.criterion, e2mc.__main__\n"
        f"loaded = [m for m in {NOT_CORE!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        f"present = [m for m in {NOT_CORE!r} if importlib.util.find_spec(m)]\n"
        "assert not present, present  # the venv really holds the core only\n"
        "print(e2mc.__file__)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().startswith(str(site))  # the installed wheel, not the source tree
    cli = subprocess.run([str(python), "-m", "e2mc", "--help"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    submit = subprocess.run([str(python), "-m", "e2mc", "submit", "--config", "x.yaml"], cwd=tmp_path, env=clean,
                            capture_output=True, text=True)
    assert submit.returncode == 2 and "pip install 'e2mc[repro]'" in submit.stderr
    assert len(submit.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("module", ["e2mc", "e2mc.criterion"])
def test_importing_the_criterion_loads_no_optional_dependency(module):
    """The same check in this environment, where the extras are installed: nothing imports them eagerly."""
    code = f"import sys, {module}; print([m for m in {NOT_CORE!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"
