"""Version facts of this build, reported by the Version services and ``wharf version``."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

# The one place the version is written: pyproject.toml reads it from here (setuptools ``attr``).
VERSION = "0.1.0"
# The CRI names the runtime; kubelet shows "<runtime_name>://<runtime_version>".
RUNTIME_NAME = "wharfd"
# The version of the CRI API served (Version.version in the CRI; kubelet needs it non-empty).
CRI_API_VERSION = "v1"


def version() -> str:
    """The package version, e.g. ``0.1.0`` (a constant: no importlib.metadata, which costs ~1 MiB)."""
    return VERSION


@functools.cache
def revision() -> str:
    """The git commit the code was installed from, when it can be found; else ``unknown``."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
