"""The conda environment and the pip package must name the same dependencies."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda names that differ from PyPI names, and conda-only infrastructure packages.
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip", "pytorch-cuda"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(s) for s in project["dependencies"]}
    pip_names |= {_name(s) for group in project["optional-dependencies"].values() for s in group}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = {CONDA_TO_PYPI.get(_name(s), _name(s)) for s in env["dependencies"] if isinstance(s, str)}
    assert conda_names - CONDA_ONLY == pip_names
    pip_section = next(s for s in env["dependencies"] if isinstance(s, dict))["pip"]
    assert "-e ." in pip_section, "environment.yml must install the project itself"
