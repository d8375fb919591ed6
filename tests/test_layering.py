"""The dependency direction: ``runtime`` may import ``trp_zoo``; ``trp_zoo`` never imports
``runtime``, not even lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imports every trp_zoo module with ``runtime`` made unimportable, then runs the CLI's help.
BLOCKED = """
import importlib, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "runtime" or name.startswith("runtime."):
            raise ImportError(f"trp_zoo imported {name}")
        return None

sys.meta_path.insert(0, Block())
import trp_zoo
names = [m.name for m in pkgutil.walk_packages(trp_zoo.__path__, "trp_zoo.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_trp_zoo_imports_without_runtime() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    modules = sorted(p for p in (ROOT / "trp_zoo").rglob("*.py"))
    # every module was imported (packages count once, through their __init__)
    assert int(done.stdout.split()[-1]) == len(modules) - 1  # trp_zoo/__init__ itself


def test_cli_help_runs_without_runtime() -> None:
    script = BLOCKED.replace("print(len(names))", "") + (
        "\nsys.argv = ['python -m trp_zoo', '--help']\nfrom trp_zoo.__main__ import main\nmain()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "python -m runtime.plan" in done.stdout


def test_the_moved_plan_command_points_to_the_runtime(capsys) -> None:
    from trp_zoo.__main__ import main

    assert main(["plan", "--model", "resnet18", "--latency", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: rank plans for a deployment target are made by the runtime: "
        "python -m runtime.plan --model resnet18 --latency 0.5"
    )


def test_no_runtime_import_statement_under_trp_zoo() -> None:
    offenders = []
    for path in (ROOT / "trp_zoo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for n in names
                if n == "runtime" or n.startswith("runtime.")
            ]
    assert offenders == []
