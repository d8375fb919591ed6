"""Every command line's usage errors are one line on stderr that points to --help (argparse
would print the whole usage block first: 40 lines for a recipe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["recipes/fashion_mnist_resnet18.py", "--lr", "nan"],
            "fashion_mnist_resnet18.py: error: --lr must be a finite number, got nan",
        ),
        (
            ["recipes/fashion_mnist_vit.py", "--epochs", "two"],
            "fashion_mnist_vit.py: error: argument --epochs: invalid int value: 'two'",
        ),
        (
            ["-m", "runtime.build_engine", "resnet18_trp_ch_fmnist"],
            "python -m runtime.build_engine: error: the following arguments are required: "
            "--output/-o",
        ),
        (
            ["-m", "runtime.plan", "--model", "resnet18", "--latency", "0.5", "--bogus"],
            "python -m runtime.plan: error: unrecognized arguments: --bogus",
        ),
        (
            ["-m", "trp_zoo", "info"],
            "python -m trp_zoo info: error: the following arguments are required: name",
        ),
    ],
)
def test_usage_error_is_one_line(command: list[str], message: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"{message} (all options: {message.split(':')[0]} --help)"]


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("recipe", "--output-dir"),
        ("recipe", "--data-dir"),
        ("recipe", "--model-name"),  # registered nothing, silently
        ("build_engine", "--output"),
        ("build_engine", "--data"),
        ("plan", "--cache-dir"),
        ("publish", "--to-dir"),
        ("publish", "--revision"),
    ],
)
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_an_empty_option_value_is_refused(command: str, option: str, form: str, capsys) -> None:
    """'' used to mean the current directory (outputs written into cwd) or the default."""
    from runtime.build_engine import main as build_main
    from runtime.plan import main as plan_main
    from tests.test_recipe_checks import _defaults
    from trp_zoo.__main__ import main as zoo_main
    from trp_zoo.train.recipe import run_recipe

    empty = [option, ""] if form == "separate" else [f"{option}="]
    run = {
        "recipe": lambda: run_recipe(_defaults(), "recipe.py", ["--epochs", "1", *empty]),
        "build_engine": lambda: build_main(["resnet18_trp_ch_fmnist", "-o", "out", *empty]),
        "plan": lambda: plan_main(["--model", "resnet18", "--latency", "0.5", *empty]),
        "publish": lambda: zoo_main(["publish", "ckpt", "--repo", "org/x", *empty]),
    }[command]
    with pytest.raises(SystemExit) as exc:
        run()
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"error: {option} is empty: give a value or leave it out" in line
