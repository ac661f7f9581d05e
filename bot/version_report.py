"""The retraining report's editing numbers per adapter version: lines of text and the chart's
two lower panels (revision rate and share posted unedited; minutes to post), so a team sees
whether a new version saves editing.

A version with fewer than ``MIN_TEXTS`` posted texts is listed with its count only: a handful
of drafts says more about the briefs than about the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.production_signals import BASE, EditStats, VersionSignals

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MIN_TEXTS = 5
LINES = 4  # the newest versions get a line each; the chart has them all

KINDS = {  # kind: (one, many, what the numbers are of)
    "drafts": ("draft", "drafts", "posted drafts"),
    "replies": ("reply", "replies", "posted suggested replies"),
}


def _stats(version: VersionSignals, kind: str) -> EditStats:
    return version.drafts if kind == "drafts" else version.replies


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def stats_text(s: EditStats, kind: str) -> str:
    """``6 drafts, revision rate 0.100, 67% posted unedited, median 3.5 min to post``, or
    the count and "too few" under ``MIN_TEXTS``."""
    one, many, _ = KINDS[kind]
    head = f"{s.n} {many if s.n != 1 else one}"
    if s.n < MIN_TEXTS:
        return f"{head}, too few {many} to judge (fewer than {MIN_TEXTS})"
    return (
        f"{head}, revision rate {_num(s.revision_rate, '.3f')}, "
        f"{_num(s.share_unedited, '.0%')} posted unedited, "
        f"median {_num(s.median_minutes, '.1f')} min to post"
    )


def version_lines(versions: Sequence[VersionSignals], active: str | None, kind: str) -> list[str]:
    """Report lines for the newest ``LINES`` versions with ``kind`` ("drafts" or "replies")
    posted and the active one, oldest first, then the newest version with enough texts against
    the one before it with enough. ``active``: the active adapter's name (None: the base)."""
    what = KINDS[kind][2]
    used = [v for v in versions if _stats(v, kind).n]
    if not used:
        return []
    current = active or BASE
    lines = [f"Editing by adapter version ({what}, oldest first):"]
    newest = {v.name for v in used[-LINES:]}
    for version in (v for v in used if v.name in newest or v.name == current):
        mark = " (active)" if version.name == current else ""
        lines.append(f"• `{version.name}`{mark}: {stats_text(_stats(version, kind), kind)}.")
    enough = [v for v in used if _stats(v, kind).n >= MIN_TEXTS]
    if len(enough) >= 2:
        old, new = _stats(enough[-2], kind), _stats(enough[-1], kind)
        lines.append(
            f"`{enough[-1].name}` against `{enough[-2].name}`: revision rate "
            f"{_num(old.revision_rate, '.3f')} → {_num(new.revision_rate, '.3f')}, posted "
            f"unedited {_num(old.share_unedited, '.0%')} → {_num(new.share_unedited, '.0%')}, "
            f"median minutes to post {_num(old.median_minutes, '.1f')} → "
            f"{_num(new.median_minutes, '.1f')}."
        )
    return lines


def has_data(versions: Sequence[VersionSignals]) -> bool:
    return any(v.drafts.n or v.replies.n for v in versions)


def draw(rates: Axes, minutes: Axes, versions: Sequence[VersionSignals]) -> None:
    """Per version in time order: revision rate and share unedited on ``rates`` (0 to 1),
    median minutes to post on ``minutes``; drafts solid, suggested replies dashed. Each tick
    says how many texts the point stands on."""
    nan = float("nan")
    xs = range(len(versions))
    for kind, style in (("drafts", "-"), ("replies", "--")):
        if not any(_stats(v, kind).n for v in versions):
            continue
        stats = [_stats(v, kind) for v in versions]

        def series(key: str, stats: list[EditStats] = stats) -> list[float]:
            values = [getattr(s, key) for s in stats]
            return [nan if value is None else float(value) for value in values]

        rates.plot(xs, series("revision_rate"), style, marker="o", color="#a8412f",
                   label=f"revision rate ({kind})")  # fmt: skip
        rates.plot(xs, series("share_unedited"), style, marker="s", color="#2f5f8f",
                   label=f"share posted unedited ({kind})")  # fmt: skip
        minutes.plot(xs, series("median_minutes"), style, marker="o", color="#6f4f8f",
                     label=f"{kind}")  # fmt: skip
    ticks = [f"{v.name}\nn={v.drafts.n + v.replies.n}" for v in versions]
    for ax in (rates, minutes):
        ax.set_xticks(list(xs), ticks, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=6, loc="best")
    rates.set_ylim(0, 1.05)
    rates.set_title("editing by adapter version (lower rate, more unedited: better)", fontsize=9)
    minutes.set_ylim(bottom=0)
    minutes.set_title("median minutes from request to posting", fontsize=9)
