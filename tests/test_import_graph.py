"""A plain install imports: every third-party module that the package and the README's routes import is required.

A subprocess imports ``ebmm_rl``, ``ebmm_rl.rl``, ``envs`` and ``agents`` with all their modules and public names,
and loads the README's scripts; every third-party top-level module that first-party code imports and that is then
loaded must belong to a distribution of ``pyproject.toml``'s ``[project] dependencies`` (not an extra).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ebmm_rl", "ebmm_rl.rl", "envs", "agents")
SCRIPTS = ("quickstart", "meta_train_binary", "meta_train_env", "meta_train_images")  # the README's commands

PROBE = f"""
import importlib, json, pkgutil, runpy, sys
from importlib.metadata import packages_distributions
sys.path.insert(0, "scripts")
for name in {PACKAGES!r}:
    package = importlib.import_module(name)
    for public in getattr(package, "__all__", ()):
        getattr(package, public)  # the lazy exports too
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        module = importlib.import_module(info.name)
        for public in getattr(module, "__all__", ()):
            getattr(module, public)
for script in {SCRIPTS!r}:
    runpy.run_path(f"scripts/{{script}}.py", run_name="not_main")
files = {{n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if m is not None}}
print(json.dumps({{"files": files, "distributions": packages_distributions()}}))
"""


def normalize(distribution: str) -> str:
    """PEP 503 name: ``PyYAML`` and ``pyyaml``, ``sb3_contrib`` and ``sb3-contrib`` are one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def required_distributions(pyproject: dict) -> set[str]:
    """The distributions of ``[project] dependencies`` (extras excluded)."""
    return {normalize(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in pyproject["project"]["dependencies"]}


def is_first_party(file: str | None) -> bool:
    """A module file of this checkout (packages and scripts)."""
    return bool(file) and Path(file).is_absolute() and Path(file).resolve().is_relative_to(ROOT)


def first_party_imports(files: dict[str, str | None]) -> dict[str, set[str]]:
    """Top-level names that the loaded first-party modules import (absolute imports only), with the importers."""
    out: dict[str, set[str]] = {}
    for name, file in files.items():
        if not is_first_party(file) or not file.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(Path(file).read_text())):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                out.setdefault(top, set()).add(name)
    return out


def undeclared(files: dict[str, str | None], distributions: dict[str, list[str]], required: set[str]) -> dict:
    """Third-party modules imported by first-party code and loaded, whose distribution is not a required one."""
    loaded = {name.split(".")[0] for name in files}
    first_party = {n.split(".")[0] for n, f in files.items() if is_first_party(f)}
    missing = {}
    for top, importers in first_party_imports(files).items():
        if top not in loaded or top in first_party or top in sys.stdlib_module_names or top == "__future__":
            continue  # a lazy import that did not run, our own module, or the standard library
        owners = {normalize(d) for d in distributions.get(top, [])}
        if not owners & required:
            missing[top] = (sorted(owners) or ["no installed distribution"], sorted(importers))
    return missing


def probe() -> tuple[dict, dict]:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    return result["files"], result["distributions"]


def test_every_third_party_import_is_a_required_dependency():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files, distributions = probe()
    required = required_distributions(pyproject)
    assert undeclared(files, distributions, required) == {}
    imported = set(first_party_imports(files)) & {n.split(".")[0] for n in files}
    # the probe saw the routes it is meant to check (it would pass vacuously otherwise)
    assert {"torch", "numpy", "gymnasium", "stable_baselines3", "sb3_contrib", "tyro", "yaml"} <= imported

    # and it fails when a required import is moved to an extra, as a plain install would
    moved = {**pyproject["project"], "dependencies": [r for r in pyproject["project"]["dependencies"]
                                                      if not r.startswith(("sb3-contrib", "pyyaml"))]}  # fmt: skip
    missing = undeclared(files, distributions, required_distributions({"project": moved}))
    assert set(missing) == {"sb3_contrib", "yaml"}
    assert missing["yaml"][0] == ["pyyaml"] and any(m.startswith("agents") for m in missing["yaml"][1])
