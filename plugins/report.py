"""Posts the retraining report (numbers and a chart) to the dataset's report channel when a run
finishes, exactly once (outbox event), or an alert when a run fails."""

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
            ctx.chat.upload_file(
                dataset.report_channel, report.chart_png, f"{dataset.name}-run{run.id}.png",
                title=report.title, thread_ts=ts,
            )  # fmt: skip
