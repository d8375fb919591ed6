"""What produced a number: the software versions every results, report and card records."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

DEFAULT_PACKAGES = ("trp-zoo", "torch", "timm", "huggingface_hub", "safetensors")


def software_versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str]:
    """``{"python": ..., package: version}`` for each installed one of ``packages``."""
    out = {"python": platform.python_version()}
    for dist in packages:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out
