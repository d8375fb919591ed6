"""A real Hugging Face-compatible hub on 127.0.0.1 for tests: olah, offline, serving mirrors.

olah (a self-hosted hub mirror) serves the git repositories under its mirrors path,
``<mirror>/models/<org>/<name>``, to the ordinary huggingface_hub client. With
``offline = true`` it never contacts huggingface.co. ``/`` answers 500, so readiness is
polled on an API route (an unknown repo answers 401 once the server is up).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import constants

OLAH_CLI = Path(sys.executable).parent / "olah-cli"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OlahHub:
    """An olah server on a free loopback port, serving ``self.mirror``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirror = root / "mirror"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "olah.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        self.mirror.mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(exist_ok=True)
        netloc = f"127.0.0.1:{self.port}"
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'repos-path = "{self.root / "repos"}"\n'
            f'mirrors-path = ["{self.mirror}"]\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{netloc}"\n'
            f'mirror-lfs-netloc = "{netloc}"\n'
            "\n[accessibility]\n"
            "offline = true\n"
        )
        return config

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/api/models/probe/probe/revision/main", timeout=2)
        except urllib.error.HTTPError as err:
            return err.code < 500
        except OSError:
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        config = self._write_config()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(OLAH_CLI), "-c", str(config)],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"olah exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer within {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: olah and any workers it forked
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def use_hub(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path, offline: bool = False
) -> None:
    """Point huggingface_hub at ``endpoint`` with cache under ``hf_home``, in this process.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so
    the environment (for child processes) and its constants (for this one) are both set.
    """
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    values: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": offline,
    }
    for name, setting in values.items():
        monkeypatch.setattr(constants, name, setting)
