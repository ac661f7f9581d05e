"""Editing per adapter version: the query, the retraining report's lines and its chart."""

import datetime as dt
import struct
from typing import Any

from sqlalchemy.orm import Session

from bot.production_signals import EditStats, VersionSignals, version_signals
from bot.reporting import build_report
from bot.storage import Database
from bot.storage.models import Adapter, Dataset, Draft, Suggestion, TrainingRun
from bot.storage.repositories import Datasets

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
PNG = b"\x89PNG\r\n\x1a\n"


def _drafts(
    ds: Dataset, adapter: str | None, day: int, rows: list[tuple[int, int, int]]
) -> list[Draft]:
    """(edit distance, posted length, minutes to post) per posted draft, requested on ``day``."""
    start = T0 + dt.timedelta(days=day)
    return [
        Draft(dataset_id=ds.id, adapter_name=adapter, brief="b", requested_by="U1", status="posted",
              text="model", final_text="x" * length, edit_distance=distance,
              requested_at=start + dt.timedelta(hours=i),
              posted_at=start + dt.timedelta(hours=i, minutes=minutes))
        for i, (distance, length, minutes) in enumerate(rows)
    ]  # fmt: skip


def _seed(s: Session) -> Dataset:
    """base (5 drafts), then vs-v9 (6), then vs-v10 (2, too few); noise that must not count."""
    ds = Datasets(s).create("vs", "draft", channels=["C0VERS001"])
    other = Datasets(s).create("other", "draft", channels=["C0VERS002"])
    s.add_all(_drafts(ds, "vs-v10", 3, [(0, 40, 1), (40, 40, 3)]))  # inserted first, used last
    s.add_all(_drafts(ds, None, 0, [(0, 100, 2), (0, 100, 4), (20, 100, 6), (40, 100, 8),
                                    (10, 100, 10)]))  # fmt: skip
    s.add_all(_drafts(ds, "vs-v9", 1, [(0, 50, 1), (0, 50, 2), (0, 50, 3), (10, 50, 4),
                                       (0, 50, 5), (20, 50, 6)]))  # fmt: skip
    s.add_all(_drafts(other, "vs-v9", 1, [(50, 50, 60)] * 3))
    s.add_all([
        Draft(dataset_id=ds.id, adapter_name="vs-v9", brief="b", requested_by="U1",
              status="discarded", text="t", requested_at=T0),
        Draft(dataset_id=ds.id, adapter_name="vs-v10", brief="b", requested_by="U1",
              status="ready", text="t", requested_at=T0 + dt.timedelta(days=5)),
    ])  # fmt: skip
    return ds


def _runs(s: Session, ds: Dataset) -> TrainingRun:
    """vs-v9 retired, vs-v10 active; the report is run 2's (vs-v11, not promoted)."""
    runs = [TrainingRun(dataset_id=ds.id, status="succeeded", losses=[2.0, 1.5, 1.2])
            for _ in range(3)]  # fmt: skip
    s.add_all(runs)
    s.flush()
    for version, status, run in [(9, "retired", runs[0]), (10, "active", runs[1]),
                                 (11, "rejected", runs[2])]:  # fmt: skip
        s.add(Adapter(dataset_id=ds.id, name=f"vs-v{version}", version=version, status=status,
                      path="/nowhere", run_id=run.id, metrics={"answer_perplexity": 30.0 - version},
                      decision="kept the current model"))  # fmt: skip
    s.flush()
    return runs[2]


def test_editing_per_version_in_time_order(db: Database) -> None:
    with db.session() as s:
        _seed(s)
    with db.session() as s:
        versions = version_signals(s, Datasets(s).get("vs"))
        assert [v.name for v in versions] == ["base", "vs-v9", "vs-v10"]  # time, not name order
        base, v9, v10 = versions
        assert base.drafts == EditStats(n=5, revision_rate=0.14, share_unedited=0.4,
                                        median_minutes=6.0)  # fmt: skip
        assert v9.drafts == EditStats(n=6, revision_rate=0.1, share_unedited=0.6667,
                                      median_minutes=3.5)  # fmt: skip
        assert v10.drafts == EditStats(n=2, revision_rate=0.5, share_unedited=0.5,
                                       median_minutes=2.0)  # fmt: skip
        assert all(v.replies.n == 0 for v in versions)
        assert (v9.first_at - base.first_at) == dt.timedelta(days=1)
        only = version_signals(s, Datasets(s).get("vs"), names=["vs-v10", "base"])
        assert [v.name for v in only] == ["base", "vs-v10"]
        assert version_signals(s, Datasets(s).create("empty", "draft")) == []


def test_suggested_replies_per_version(db: Database) -> None:
    with db.session() as s:
        ds = Datasets(s).create("rv", "draft", ticket_channels=["C0SUPPORT9"], reply_mode="thread")
        start = T0 + dt.timedelta(days=1)
        rows = [(0, 1), (5, 2), (0, 3), (0, 4), (10, 5)]
        s.add_all([
            Suggestion(dataset_id=ds.id, channel_id="C0SUPPORT9", ticket_ts=f"1.{i}",
                       status="posted", adapter_name="rv-v1", text="model", final_text="a" * 50,
                       edit_distance=distance, suggested_at=start + dt.timedelta(hours=i),
                       resolved_at=start + dt.timedelta(hours=i, minutes=minutes))
            for i, (distance, minutes) in enumerate(rows)
        ] + [
            Suggestion(dataset_id=ds.id, channel_id="C0SUPPORT9", ticket_ts="2.1",
                       status="dismissed", adapter_name="rv-v1", suggested_at=start,
                       resolved_at=start),
            Suggestion(dataset_id=ds.id, channel_id="C0SUPPORT9", ticket_ts="2.2",
                       status="posted", adapter_name=None, text="m", final_text="b" * 10,
                       edit_distance=5, suggested_at=T0, resolved_at=T0 + dt.timedelta(minutes=9)),
        ])  # fmt: skip
        s.add_all(_drafts(ds, "rv-v1", 2, [(0, 10, 1)]))
    with db.session() as s:
        ds = Datasets(s).get("rv")
        base, v1 = version_signals(s, ds)
        assert (base.name, base.drafts.n) == ("base", 0)
        assert base.replies == EditStats(n=1, revision_rate=0.5, share_unedited=0.0,
                                         median_minutes=9.0)  # fmt: skip
        assert v1.replies == EditStats(n=5, revision_rate=0.06, share_unedited=0.6,
                                       median_minutes=3.0)  # fmt: skip
        assert v1.drafts == EditStats(n=1, revision_rate=0.0, share_unedited=1.0,
                                      median_minutes=1.0)  # fmt: skip
        run = TrainingRun(dataset_id=ds.id, status="succeeded", losses=[1.0])
        s.add(run)
        s.flush()
        lines = build_report(s, run.id).lines
        first = lines.index("Editing by adapter version (posted suggested replies, oldest first):")
        assert lines[first + 1 : first + 3] == [
            "• `base` (active): 1 reply, too few replies to judge (fewer than 5).",
            "• `rv-v1`: 5 replies, revision rate 0.060, 60% posted unedited, median 3.0 min to post.",
        ]
        assert "• `rv-v1`: 1 draft, too few drafts to judge (fewer than 5)." in lines


def _height(png: bytes) -> int:
    assert png[:8] == PNG and png[12:16] == b"IHDR"
    return int(struct.unpack(">I", png[20:24])[0])


def test_the_report_has_the_editing_lines_and_chart(db: Database) -> None:
    with db.session() as s:
        ds = _seed(s)
        run_id = _runs(s, ds).id
    with db.session() as s:
        report = build_report(s, run_id)
        start = report.lines.index("Editing by adapter version (posted drafts, oldest first):")
        assert report.lines[start + 1 :] == [
            "• `base`: 5 drafts, revision rate 0.140, 40% posted unedited, median 6.0 min to post.",
            "• `vs-v9`: 6 drafts, revision rate 0.100, 67% posted unedited, median 3.5 min to post.",
            "• `vs-v10` (active): 2 drafts, too few drafts to judge (fewer than 5).",
            "`vs-v9` against `base`: revision rate 0.140 → 0.100, posted unedited 40% → 67%, "
            "median minutes to post 6.0 → 3.5.",
        ]
        first = report.chart_png
        assert first is not None and first == build_report(s, run_id).chart_png  # deterministic
        s.add_all(_drafts(Datasets(s).get("vs"), "vs-v10", 4, [(0, 40, 30)] * 3))
        s.flush()
        again = build_report(s, run_id)
        assert "• `vs-v10` (active): 5 drafts, revision rate 0.200, 80% posted unedited, " \
               "median 30.0 min to post." in again.lines  # fmt: skip
        assert again.lines[-1].startswith("`vs-v10` against `vs-v9`: revision rate 0.100 → 0.200")
        assert again.chart_png is not None and again.chart_png != first
        # the editing panels are a second row under the loss and metric panels
        empty = Datasets(s).create("quiet", "draft")
        quiet = TrainingRun(dataset_id=empty.id, status="succeeded", losses=[2.0, 1.5, 1.2])
        s.add(quiet)
        s.flush()
        plain = build_report(s, quiet.id)
        assert not any(line.startswith("Editing by adapter version") for line in plain.lines)
        assert plain.chart_png is not None
        assert _height(first) == 2 * _height(plain.chart_png)


def test_the_lines_keep_the_active_version_after_a_rollback() -> None:
    from bot.version_report import LINES, version_lines

    enough = EditStats(n=5, revision_rate=0.1, share_unedited=0.6, median_minutes=2.0)
    none = EditStats(0, None, None, None)
    versions = [
        VersionSignals(f"rb-v{i}", T0 + dt.timedelta(days=i), enough, none) for i in range(1, 7)
    ]
    lines = version_lines(versions, "rb-v1", "drafts")
    assert [line.split("`")[1] for line in lines[1 : LINES + 2]] == [
        "rb-v1", "rb-v3", "rb-v4", "rb-v5", "rb-v6",
    ]  # fmt: skip
    assert lines[1].startswith("• `rb-v1` (active): 5 drafts, revision rate 0.100")
    assert lines[-1].startswith("`rb-v6` against `rb-v5`:")
    assert version_lines(versions, "rb-v1", "replies") == []


def test_the_report_plugin_posts_the_lines_then_the_chart(
    db: Database, fake_slack: Any, slack_signing_secret: str
) -> None:
    from bot.plugin_loader import PluginEntry
    from bot.storage.repositories import Outbox
    from plugins.report import ReportPlugin
    from tests.bot.slack_harness import serve_bot

    fake_slack.add_channel("C0REPORTS9", "reports", members=[fake_slack.bot_user_id])
    with db.session() as s:
        ds = _seed(s)
        ds.report_channel = "C0REPORTS9"
        run = _runs(s, ds)
        Outbox(s).publish("run.finished", {"run_id": run.id, "dataset_id": ds.id})
        run_id = run.id
    with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("report", ReportPlugin)],
                   settings={"retry_seconds": 0}) as bot:  # fmt: skip
        assert [bot.runtime.deliver_outbox() for _ in range(2)] == [1, 1]  # text, then chart
    (post,) = [c.args["text"] for c in fake_slack.calls_for("chat.postMessage")]
    assert "• `vs-v9`: 6 drafts, revision rate 0.100, 67% posted unedited" in post
    (png,) = fake_slack.uploaded_files
    with db.session() as s:
        assert png.content == build_report(s, run_id).chart_png
    assert _height(png.content) > 700  # the second row of panels (one row is 352 px high)


def test_brandbot_report_json_has_the_versions(db: Database, cli: Any) -> None:
    with db.session() as s:
        _seed(s)
    shown = cli("report", "-d", "vs", "--json")
    assert shown.code == 0, shown.err
    versions = shown.json()["versions"]
    assert [v["name"] for v in versions] == ["base", "vs-v9", "vs-v10"]
    assert versions[1]["drafts"] == {"n": 6, "revision_rate": 0.1, "share_unedited": 0.6667,
                                     "median_minutes": 3.5}  # fmt: skip
    assert versions[1]["replies"]["n"] == 0
    assert dt.datetime.fromisoformat(versions[1]["first_at"]).replace(tzinfo=None) == (
        T0 + dt.timedelta(days=1)
    ).replace(tzinfo=None)
