import datetime as dt

from bot.signals import production_signals
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
