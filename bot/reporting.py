"""The retraining report: data counts, the metric table (base / current / new with the
decision's interval), the decision and why, sample drafts beside the approved text, production
signals with the editing each adapter version needed, and a PNG with the loss curve, the metric
history and the editing per version. Used by the report plugin (Slack) and ``brandbot report``
(terminal)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot import version_report
from bot.production_signals import (
    VersionSignals,
    production_signals,
    suggestion_signals,
    version_signals,
)
from bot.reply_prompts import is_reply_dataset
from bot.storage.models import Adapter, Dataset, Example, TrainingRun

PRIMARY = {"draft": "answer_perplexity", "classify": "macro_f1"}
COLUMNS = {
    "draft": [("answer_perplexity", "answer perplexity"), ("chrf", "chrF"),
              ("rule_compliance", "rule compliance"), ("seconds", "eval s")],
    "classify": [("macro_f1", "macro-F1"), ("accuracy", "accuracy"),
                 ("invalid_rate", "invalid answers"), ("seconds", "eval s")],
}  # fmt: skip


@dataclass
class Report:
    title: str
    lines: list[str]
    chart_png: bytes | None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def data_counts(session: Session, dataset: Dataset, run: TrainingRun) -> dict[str, Any]:
    previous = session.scalar(
        select(func.max(TrainingRun.started_at)).where(
            TrainingRun.dataset_id == dataset.id,
            TrainingRun.status == "succeeded",
            TrainingRun.id < run.id,
        )
    )

    def count(*where: Any) -> int:
        stmt = select(func.count()).select_from(Example).where(Example.dataset_id == dataset.id)
        return int(session.scalar(stmt.where(*where)) or 0)

    since = [Example.created_at > previous] if previous else []
    by_label = dict(
        session.execute(
            select(Example.label, func.count())
            .where(Example.dataset_id == dataset.id, Example.status == "active",
                   Example.label.is_not(None))
            .group_by(Example.label)
        ).all()
    )  # fmt: skip
    return {
        "trained_on": len(run.example_ids or []),
        "active": count(Example.status == "active"),
        "new": count(Example.status == "active", *since),
        "withdrawn": count(Example.status == "withdrawn", *(
            [Example.updated_at > previous] if previous else [])),
        "by_label": {str(k): int(v) for k, v in by_label.items()},
        "previous": previous,
    }  # fmt: skip


def suggestion_line(signals: dict[str, Any]) -> str:
    """The reply dataset's suggestions since the last report, as one line."""
    n = signals["suggestions_resolved"]
    if not n:
        return "Suggested replies since the last report: none posted or dismissed yet."

    def pct(key: str) -> str:
        return f"{signals[key]:.0%}"

    minutes = signals["median_minutes_to_posted_reply"]
    after = f"; median {_fmt(minutes)} min from suggestion to reply" if minutes is not None else ""
    return (
        f"Suggested replies since the last report: {n} acted on, "
        f"{pct('share_suggestions_posted_unedited')} posted unedited, "
        f"{pct('share_suggestions_posted_edited')} edited, "
        f"{pct('share_suggestions_dismissed')} dismissed{after}."
    )


def chart(
    run: TrainingRun,
    history: list[tuple[str, float]],
    metric: str,
    versions: Sequence[VersionSignals] = (),
) -> bytes:
    """Loss per step and the primary metric of the dataset's adapters, as one PNG; with
    production numbers per adapter version, a second row of panels shows the editing they
    needed (``bot.version_report.draw``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if version_report.has_data(versions) else 1
    fig, axes = plt.subplots(rows, 2, figsize=(9, 3.2 * rows), dpi=110, squeeze=False)
    left, right = axes[0]
    losses = list(run.losses or [])
    left.plot(range(1, len(losses) + 1), losses, color="#2f6f4f")
    left.set_title("training loss (answer tokens)")
    left.set_xlabel("step")
    if history:
        names, values = zip(*history, strict=True)
        right.plot(range(len(values)), values, marker="o", color="#7a4f2f")
        right.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
    right.set_title(f"held-out {metric.replace('_', ' ')} by adapter")
    if rows == 2:
        version_report.draw(axes[1][0], axes[1][1], versions)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def preference_lines(metrics: dict[str, Any]) -> list[str]:
    """Held-out preference accuracy and mean margin per model, when the run had held-out pairs,
    and what the preference stage trained on."""
    out = []
    pairs = metrics.get("pairs") or {}
    cells = []
    for key in ("base", "current", "new"):
        summary = metrics.get(key) or {}
        if summary.get("preference_accuracy") is not None:
            cells.append(
                f"{key} {_pct(summary['preference_accuracy'])} "
                f"(margin {_fmt(summary.get('preference_margin'))})"
            )
    if cells:
        n = (metrics.get("new") or {}).get("preference_pairs") or pairs.get("heldout")
        out.append(f"Preference accuracy on {n} held-out pairs: " + " → ".join(cells))
    stage = metrics.get("preference_stage")
    if stage:
        out.append(
            f"Preference stage: {stage.get('method')} on {pairs.get('trained_on')} pairs, "
            f"{stage.get('steps')} steps, {_fmt(stage.get('seconds'))} s."
        )
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def build_report(session: Session, run_id: int) -> Report:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise LookupError(f"there is no run {run_id}")
    dataset = session.get(Dataset, run.dataset_id)
    assert dataset is not None
    adapter = session.scalar(select(Adapter).where(Adapter.run_id == run.id))
    if run.status == "failed":
        lines = [
            f":rotating_light: Training run {run.id} for `{dataset.name}` failed: "
            f"{(run.error or 'unknown error').splitlines()[0][:500]}",
            "The active adapter is unchanged. Checkpoints are kept; retry with "
            f"`/brandbot retrain {dataset.name}`.",
        ]
        return Report(f"{dataset.name}: run {run.id} failed", lines, None)
    metrics = run.metrics or {}
    counts = data_counts(session, dataset, run)
    lines = [
        f"*Retraining report: `{dataset.name}`, run {run.id}* "
        f"({_fmt(run.duration_s)} s, {_fmt(run.tokens_per_s)} tokens/s)",
        f"Data: trained on {counts['trained_on']} examples; {counts['active']} active, "
        f"{counts['new']} new and {counts['withdrawn']} withdrawn since the last training.",
    ]
    if counts["by_label"]:
        lines.append(
            "By label: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["by_label"].items()))
        )
    header = ["model", *[label for _, label in COLUMNS[dataset.task]]]
    table = [" | ".join(header)]
    for key in ("base", "current", "new"):
        summary = metrics.get(key)
        if not summary:
            continue
        row = [f"{key} ({summary.get('name', key)})"]
        row += [_fmt(summary.get(col)) for col, _ in COLUMNS[dataset.task]]
        table.append(" | ".join(row))
    lines.append("```\n" + "\n".join(table) + "\n```")
    lines += preference_lines(metrics)
    decision = metrics.get("decision") or {}
    interval = decision.get("interval")
    if interval:
        lines.append(
            f"Difference in {decision.get('metric', PRIMARY[dataset.task]).replace('_', ' ')}: "
            f"{_fmt(interval[0])} (90% CI {_fmt(interval[1])} to {_fmt(interval[2])})"
        )
    status = adapter.status if adapter else "?"
    verdict = (
        ":white_check_mark: promoted" if status == "active" else ":no_entry: kept the current model"
    )
    lines.append(f"Decision: {verdict}. {adapter.decision if adapter else ''}")
    if dataset.task == "draft":
        lines += _sample_drafts(session, run)
    signals = production_signals(session, dataset)
    if is_reply_dataset(dataset):
        lines.append(suggestion_line(suggestion_signals(session, dataset, counts["previous"])))
    if dataset.task == "draft" and signals["drafts_posted"]:
        lines.append(
            f"In production: {signals['drafts_posted']} drafts posted, revision rate "
            f"{_fmt(signals['draft_revision_rate'])}, {_fmt(signals['share_posted_unedited'])} "
            f"posted unedited, median {_fmt(signals['median_minutes_to_approved_draft'])} min "
            "to an approved draft."
        )
    if dataset.task == "classify" and signals["predictions_resolved"]:
        lines.append(
            f"In production: label correction rate {_fmt(signals['label_correction_rate'])}."
        )
    versions = version_signals(session, dataset) if dataset.task == "draft" else []
    active = session.scalar(
        select(Adapter.name).where(Adapter.dataset_id == dataset.id, Adapter.status == "active")
    )
    for kind in ("drafts", "replies"):
        lines += version_report.version_lines(versions, active, kind)
    metric = PRIMARY[dataset.task]
    history = metric_history(session, dataset, run, metric)
    png = chart(run, history, metric, versions)
    return Report(f"{dataset.name}: run {run.id}", lines, png)


def metric_history(
    session: Session, dataset: Dataset, run: TrainingRun, metric: str
) -> list[tuple[str, float]]:
    """The chart's points: the base model (as this run measured it), then every adapter of
    the dataset in version order, so the first adapter's gain over the base shows too."""
    history = []
    base = ((run.metrics or {}).get("base") or {}).get(metric)
    if isinstance(base, int | float):
        history.append(("base", float(base)))
    history += [
        (a.name, float(a.metrics[metric]))
        for a in session.scalars(
            select(Adapter).where(Adapter.dataset_id == dataset.id).order_by(Adapter.version)
        )
        if isinstance((a.metrics or {}).get(metric), int | float)
    ]
    return history


def _sample_drafts(session: Session, run: TrainingRun) -> list[str]:
    """The new adapter's drafts for three held-out briefs (in evaluation order) beside the
    approved text."""
    metrics = run.metrics or {}
    cards = {c.get("name"): c for c in metrics.get("scorecards", []) if c}
    card = cards.get((metrics.get("new") or {}).get("name"))
    ids = metrics.get("heldout_ids") or []
    if not card or not card.get("drafts") or not ids:
        return []
    out = ["Three held-out briefs, the new adapter's draft beside the approved text:"]
    for example_id, draft in list(zip(ids, card["drafts"], strict=False))[:3]:
        example = session.get(Example, example_id)
        if example is None:
            continue
        out.append(
            f"• _{(example.prompt or '')[:150]}_\n   draft: {draft[:280]}\n"
            f"   approved: {example.text[:280]}"
        )
    return out
