"""What a benchmark ran on: package versions (ours and another environment's), the commit, the
CPU and the machine's load, so a reader can tell whether two tables are comparable.

Numbers from these shared VMs only mean something next to numbers of the same run; these lines
say which run that was.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft")
_PROBE = """
import contextlib, importlib.metadata as m, json, platform
out = {"python": platform.python_version()}
for name in %r:
    with contextlib.suppress(m.PackageNotFoundError):
        out[name] = m.version(name)
print(json.dumps(out))
"""


def local_versions() -> dict[str, str]:
    """Python and the model packages of this interpreter."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def env_versions(python: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Python and ``packages`` as installed in the environment of the interpreter ``python``
    (e.g. vLLM's own virtual environment); empty when it cannot be asked."""
    try:
        probe = subprocess.run(
            [python, "-c", _PROBE % (packages,)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    data: dict[str, str] = json.loads(probe.stdout)
    return data


#: written by the benchmarks themselves: a change there does not change what is measured, and
#: ``make bench`` runs one bench after another, each writing its section
RESULTS = "docs/benchmarks.md"


def commit(root: Path = ROOT) -> tuple[str, bool]:
    """``git rev-parse HEAD`` of the checkout at ``root`` and whether its tracked files other
    than :data:`RESULTS` have changes (a checkout git cannot read counts as changed)."""
    sha = _git(root, "rev-parse", "HEAD") or "unknown"
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".",
                  f":(exclude){RESULTS}")  # fmt: skip
    return sha, status is None or bool(status)


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
