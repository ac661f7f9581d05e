"""The Home tab's "model over time": per dataset, the retraining report's chart (training loss,
the headline metric of every adapter), uploaded once per adapter version and then reused.

The chart of a dataset is keyed by its newest adapter: a new version draws and uploads a new
one, and the uploaded file's id is kept on that adapter (``Adapter.chart_file``), so opening the
tab again, by anyone, uploads nothing. Slack shows a file in an image block only where it was
shared, so the chart is shared in the dataset's report channel (where the reports go) and a
dataset without one shows no chart. An upload that fails leaves the view without that chart and
is tried again at the next publish.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from sqlalchemy import update

from bot.home_view import DatasetCard, HomeData
from bot.plugin import ChatAPI, ChatError
from bot.reporting import PRIMARY, chart, metric_history
from bot.storage import Database
from bot.storage.models import Adapter, Dataset, TrainingRun

log = logging.getLogger("brandbot.home")


class Charts:
    """Fills in the chart of each dataset card of a Home view, uploading what is missing."""

    def __init__(self, db: Database, chat: ChatAPI) -> None:
        self.db, self.chat = db, chat
        self._lock = threading.Lock()  # one upload per version while several views are built

    def attach(self, data: HomeData) -> HomeData:
        return replace(data, datasets=[self._card(c) for c in data.datasets])

    def _card(self, card: DatasetCard) -> DatasetCard:
        if card.chart_file or not card.chart_adapter_id:
            return card
        with self._lock:
            file_id = self._upload(card.chart_adapter_id)
        return replace(card, chart_file=file_id) if file_id else card

    def _upload(self, adapter_id: int) -> str | None:
        with self.db.session() as s:
            adapter = s.get(Adapter, adapter_id)
            if adapter is None or adapter.chart_file:
                return adapter.chart_file if adapter else None
            dataset = s.get(Dataset, adapter.dataset_id)
            run = s.get(TrainingRun, adapter.run_id) if adapter.run_id else None
            if dataset is None or run is None or not dataset.report_channel:
                return None
            metric = PRIMARY[dataset.task]
            png = chart(run, metric_history(s, dataset, run, metric), metric)
            channel, name, title = dataset.report_channel, adapter.name, dataset.name
        try:
            file_id = self.chat.upload_file(
                channel, png, f"{name}-history.png", title=f"{title}: model over time"
            )
        except ChatError as exc:
            log.warning("home chart of %s not uploaded: %s", name, exc.code)
            return None
        if file_id:
            with self.db.session() as s:
                s.execute(update(Adapter).where(Adapter.id == adapter_id,
                                                Adapter.chart_file.is_(None))
                          .values(chart_file=file_id))  # fmt: skip
        return file_id
