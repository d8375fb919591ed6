"""mypy really checks the TensorRT backend against TensorRT's stubs (typings/, see setup.sh)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "typings" / "tensorrt" / "__init__.pyi"


@pytest.mark.skipif(not STUBS.is_file(), reason="TensorRT stubs missing: run scripts/setup.sh")
def test_mypy_rejects_a_wrong_tensorrt_call(tmp_path):
    snippet = tmp_path / "wrong_trt.py"
    snippet.write_text(
        "import tensorrt as trt\n\n\n"
        "def configure(config: trt.IBuilderConfig, context: trt.IExecutionContext) -> None:\n"
        "    config.set_memory_pool_limit(1 << 30)\n"
        "    context.execute_async_v2(0)\n"
    )
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cmd.append(str(snippet))  # the project's mypy cache: warm after scripts/test.sh's mypy run
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Missing positional argument "pool_size"' in result.stdout
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in result.stdout
