import datetime as dt

from bot.production_signals import production_signals
from bot.storage import Database
from bot.storage.models import Draft, Prediction
from bot.storage.repositories import Datasets


def test_production_signals(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    t0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
    with db.session() as s:
        ds = Datasets(s).create("c", "draft")
        s.add_all([
            Draft(dataset_id=ds.id, brief="b", requested_by="U1", status="posted", final_text="x" * 100,
                  edit_distance=0, requested_at=t0, posted_at=t0 + dt.timedelta(minutes=2)),
            Draft(dataset_id=ds.id, brief="b", requested_by="U1", status="posted", final_text="y" * 100,
                  edit_distance=20, requested_at=t0, posted_at=t0 + dt.timedelta(minutes=6)),
            Draft(dataset_id=ds.id, brief="b", requested_by="U1", status="discarded"),
            Prediction(dataset_id=ds.id, label="a", confidence=0.9, status="confirmed", resolved_at=t0),
            Prediction(dataset_id=ds.id, label="a", confidence=0.4, status="corrected", resolved_at=t0),
            Prediction(dataset_id=ds.id, label="a", confidence=0.4, status="corrected", resolved_at=t0),
            Prediction(dataset_id=ds.id, label="a", confidence=0.4, status="pending"),
        ])  # fmt: skip
    with db.session() as s:
        signals = production_signals(s, Datasets(s).get("c"))
        assert signals["drafts_posted"] == 2
        assert signals["draft_revision_rate"] == 0.1 and signals["mean_edit_distance"] == 10
        assert signals["share_posted_unedited"] == 0.5
        assert signals["median_minutes_to_approved_draft"] == 4
        assert signals["label_correction_rate"] == round(2 / 3, 4)
        later = production_signals(s, Datasets(s).get("c"), since=t0 + dt.timedelta(minutes=3))
        assert later["drafts_posted"] == 1 and later["predictions_resolved"] == 0


def test_suggestion_signals_and_the_report_line(sqlite_url: str) -> None:
    from bot.production_signals import suggestion_signals
    from bot.reporting import suggestion_line
    from bot.storage.models import Suggestion

    db = Database(sqlite_url)
    db.upgrade()
    t0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
    with db.session() as s:
        ds = Datasets(s).create("r", "draft", ticket_channels=["C0SUPPORT1"], reply_mode="thread")
        assert suggestion_line(suggestion_signals(s, ds)).endswith("none posted or dismissed yet.")
        common = {"dataset_id": ds.id, "channel_id": "C0SUPPORT1", "suggested_at": t0}
        s.add_all([
            Suggestion(ticket_ts="1.1", status="posted", edit_distance=0, final_text="a" * 50,
                       resolved_at=t0 + dt.timedelta(minutes=2), **common),
            Suggestion(ticket_ts="1.2", status="posted", edit_distance=10, final_text="b" * 50,
                       resolved_at=t0 + dt.timedelta(minutes=4), **common),
            Suggestion(ticket_ts="1.3", status="dismissed", resolved_at=t0, **common),
            Suggestion(ticket_ts="1.4", status="dismissed", resolved_at=t0, **common),
            Suggestion(ticket_ts="1.5", status="ready", **common),
        ])  # fmt: skip
    with db.session() as s:
        signals = production_signals(s, Datasets(s).get("r"))
        assert signals["suggestions_resolved"] == 4
        assert signals["share_suggestions_posted_unedited"] == 0.25
        assert signals["share_suggestions_posted_edited"] == 0.25
        assert signals["share_suggestions_dismissed"] == 0.5
        assert signals["suggestion_revision_rate"] == 0.1
        assert signals["median_minutes_to_posted_reply"] == 3
        line = suggestion_line(signals)
        assert "4 acted on, 25% posted unedited, 25% edited, 50% dismissed" in line
        later = suggestion_signals(s, Datasets(s).get("r"), t0 + dt.timedelta(minutes=3))
        assert later["suggestions_resolved"] == 1
        from bot.reporting import build_report
        from bot.storage.models import TrainingRun

        run = TrainingRun(dataset_id=Datasets(s).get("r").id, status="succeeded", losses=[2.0, 1.5])
        s.add(run)
        s.flush()
        report = build_report(s, run.id)
        assert any(line.startswith("Suggested replies since the last report: 4") for line in
                   report.lines)  # fmt: skip


def test_the_report_chart_starts_from_the_base_model(db_url: str) -> None:
    from bot.reporting import metric_history
    from bot.storage.models import Adapter, TrainingRun

    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        ds = Datasets(s).create("chart", "draft", channels=["C0CHART01"])
        run = TrainingRun(dataset_id=ds.id, status="succeeded",
                          metrics={"base": {"answer_perplexity": 40.5}, "new": {"answer_perplexity": 24.9}})  # fmt: skip
        s.add(run)
        s.flush()
        for version, ppl in [(1, 30.0), (2, 24.9)]:
            s.add(Adapter(dataset_id=ds.id, name=f"chart-v{version}", version=version,
                          path="/nowhere", metrics={"answer_perplexity": ppl}))  # fmt: skip
        s.flush()
        history = metric_history(s, ds, run, "answer_perplexity")
        assert history == [("base", 40.5), ("chart-v1", 30.0), ("chart-v2", 24.9)]
        run.metrics = {}
        assert [name for name, _ in metric_history(s, ds, run, "answer_perplexity")] == [
            "chart-v1",
            "chart-v2",
        ]  # a run without a base measurement plots the adapters only
