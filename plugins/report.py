"""Posts the retraining report (numbers and a chart) to the dataset's report channel when a run
finishes, exactly once (outbox event), or an alert when a run fails.

The text and the chart are two steps, each its own outbox event: posting the text publishes
``report.chart`` in the same transaction, so an upload that fails is retried alone and never
posts the text again.
"""

from __future__ import annotations

import logging

from bot.plugin import Context, InternalEvent, Plugin, on_event
from bot.reporting import build_report
from bot.storage.models import Dataset, TrainingRun

log = logging.getLogger("brandbot.report")


class ReportPlugin(Plugin):
    """Retraining reports."""

    @on_event("run.finished")
    @on_event("run.failed")
    def report(self, event: InternalEvent, ctx: Context) -> None:
        run = ctx.session.get(TrainingRun, int(event.payload["run_id"]))
        dataset = ctx.session.get(Dataset, run.dataset_id) if run else None
        if run is None or dataset is None:
            return
        if not dataset.report_channel:
            log.info("dataset %s has no report channel; report not posted", dataset.name)
            return
        report = build_report(ctx.session, run.id)
        ts = ctx.chat.post(dataset.report_channel, "\n".join(report.lines))
        if report.chart_png:
            ctx.publish(
                "report.chart",
                {"run_id": run.id, "channel": dataset.report_channel, "thread_ts": ts},
            )

    @on_event("report.chart")
    def chart(self, event: InternalEvent, ctx: Context) -> None:
        """The report's chart, in the thread of the report's text."""
        run = ctx.session.get(TrainingRun, int(event.payload["run_id"]))
        dataset = ctx.session.get(Dataset, run.dataset_id) if run else None
        if run is None or dataset is None:
            return
        report = build_report(ctx.session, run.id)
        if report.chart_png:
            ctx.chat.upload_file(
                str(event.payload["channel"]), report.chart_png,
                f"{dataset.name}-run{run.id}.png", title=report.title,
                thread_ts=event.payload.get("thread_ts"),
            )  # fmt: skip
