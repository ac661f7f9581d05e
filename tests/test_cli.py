"""The ``brandbot`` command line through its real entry point (in-process, see the ``cli``
fixture), against SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.base_model import ResolvedModel
from tests.conftest import CliRunner, write_jsonl


def test_help_teaches(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite("--help")
    assert result.code == 0
    for word in ("run", "datasets", "import", "export", "db"):
        assert word in result.out
    sub = cli_sqlite("datasets", "update", "--help")
    assert "--banned-words" in sub.out
    assert "Example" in sub.out


def test_db_upgrade_and_current(cli: CliRunner) -> None:
    up = cli("db", "upgrade")
    assert up.code == 0, up.err
    cur = cli("db", "current", "--json").json()
    assert cur["revision"] is not None


def test_datasets_create_update_list_show(cli: CliRunner) -> None:
    made = cli(
        "datasets", "create", "acme_tickets", "--task", "classify",
        "--labels", "billing,refund", "--channels", "C0123ABCD", "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    assert made.json()["labels"] == ["billing", "refund"]
    changed = cli(
        "datasets", "update", "acme_tickets",
        "--label-emoji", "credit_card=billing,:money_with_wings:=refund",
        "--approvers", "U0AAA1111", "--approver-groups", "S0GRP1",
        "--ticket-channels", "C0123ABCD",
        "--report-channel", "C0REPORTS", "--schedule", "0 7 * * 1",
        "--timezone", "Europe/London", "--min-new-examples", "25",
        "--system-prompt", "Classify tickets.", "--description", "support tickets",
        "--approve-emoji", ":heavy_check_mark:", "--reject-emoji", "no_entry",
        "--json",
    )  # fmt: skip
    assert changed.code == 0, changed.err
    data = changed.json()
    assert data["label_emoji"] == {"credit_card": "billing", "money_with_wings": "refund"}
    assert data["approve_emoji"] == ["heavy_check_mark"]
    assert data["reject_emoji"] == ["no_entry"]
    assert data["schedule_timezone"] == "Europe/London"
    assert data["min_new_examples"] == 25
    cli("datasets", "create", "acme_copy", "--task", "draft")
    copy = cli(
        "datasets", "update", "acme_copy", "--max-length", "280",
        "--banned-words", "cheap, synergy", "--required-words", "Acme", "--json",
    ).json()  # fmt: skip
    assert copy["banned_words"] == ["cheap", "synergy"]
    assert copy["max_length"] == 280
    replies = cli(
        "datasets", "update", "acme_copy", "--ticket-channels", "C0123ABCD,C0456EFGH",
        "--reply-mode", "thread", "--reply-channel-modes", "C0456EFGH=ephemeral", "--json",
    ).json()  # fmt: skip
    assert replies["reply_mode"] == "thread"
    assert replies["reply_channel_modes"] == {"C0456EFGH": "ephemeral"}
    refused = cli("datasets", "update", "acme_tickets", "--reply-mode", "thread")
    assert refused.code != 0 and "only draft datasets suggest replies" in refused.err
    stray = cli("datasets", "update", "acme_copy", "--reply-channel-modes", "C0999ZZZZ=thread")
    assert stray.code != 0 and "not one of the ticket_channels" in stray.err
    listed = cli("datasets", "list", "--json").json()
    assert [d["name"] for d in listed["datasets"]] == ["acme_copy", "acme_tickets"]
    shown = cli("datasets", "show", "acme_tickets", "--json").json()
    assert shown["approvers"] == ["U0AAA1111"]
    assert shown["counts"]["total"] == 0
    table = cli("datasets", "show", "acme_tickets")
    assert table.code == 0
    assert "credit_card=billing" in table.out


def test_bad_dataset_input_is_refused_with_the_rule(cli: CliRunner) -> None:
    bad = cli("datasets", "create", "Bad-Name", "--task", "draft")
    assert bad.code == 2
    assert "^[a-z][a-z0-9_]{0,31}$" in bad.err
    assert len(bad.err.strip().splitlines()) == 1
    cli("datasets", "create", "ok", "--task", "draft")
    dup = cli("datasets", "create", "ok", "--task", "draft")
    assert dup.code == 2
    assert "already exists" in dup.err
    task = cli("datasets", "create", "ok2", "--task", "summarize")
    assert task.code == 2
    assert "task" in task.err
    cron = cli("datasets", "update", "ok", "--schedule", "every monday")
    assert cron.code == 2
    assert "schedule_cron" in cron.err
    tz = cli("datasets", "update", "ok", "--timezone", "Mars/Olympus")
    assert tz.code == 2
    assert "time zone" in tz.err
    labels = cli("datasets", "update", "ok", "--labels", "a,b")
    assert labels.code == 2
    assert "only classify datasets have labels" in labels.err
    chan = cli("datasets", "update", "ok", "--channels", "general")
    assert chan.code == 2
    assert "channel id" in chan.err


def test_unknown_dataset_lists_the_known_ones(cli: CliRunner) -> None:
    cli("datasets", "create", "alpha", "--task", "draft")
    cli("datasets", "create", "beta", "--task", "draft")
    for args in (("datasets", "show", "gamma"), ("export", "-d", "gamma")):
        result = cli(*args)
        assert result.code == 2
        assert "unknown dataset 'gamma'" in result.err
        assert "alpha, beta" in result.err


def test_import_reports_counts_and_line_numbers_then_export(cli: CliRunner, tmp_path: Path) -> None:
    cli("datasets", "create", "t", "--task", "classify", "--labels", "billing,refund")
    path = tmp_path / "in.jsonl"
    good = [
        {"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": "billing"}], "label": "billing"}
        for i in range(20)
    ]  # fmt: skip
    path.write_text(
        "\n".join(
            [json.dumps(g) for g in good[:10]] + ["{oops"] + [json.dumps(g) for g in good[10:]]
        )
        + "\n"
    )
    first = cli("import", str(path), "-d", "t")
    assert first.code == 1, first.err  # partial: a line was rejected
    assert "added 20" in first.out
    assert "rejected 1" in first.out
    assert "line 11" in first.out
    again = cli("import", str(path), "-d", "t", "--json").json()
    assert again["added"] == 0
    assert again["duplicate"] == 20
    assert again["rejections"] == [{"line": 11, "reason": again["rejections"][0]["reason"]}]
    exported = cli("export", "-d", "t")
    records = [json.loads(line) for line in exported.out.splitlines()]
    assert len(records) == 20
    assert all(r["label"] == r["messages"][-1]["content"] for r in records)
    out = tmp_path / "held.jsonl"
    held = cli("export", "-d", "t", "--split", "heldout", "-o", str(out))
    train = cli("export", "-d", "t", "--split", "train")
    assert held.code == 0
    assert train.code == 0
    assert len(out.read_text().splitlines()) + len(train.out.splitlines()) == 20
    missing = cli("import", str(tmp_path / "nope.jsonl"), "-d", "t")
    assert missing.code == 2
    assert "no such file" in missing.err


def test_csv_import_through_the_cli(cli_sqlite: CliRunner, tmp_path: Path) -> None:
    cli_sqlite("datasets", "create", "t", "--task", "classify", "--labels", "billing,refund")
    path = tmp_path / "t.csv"
    path.write_text("text,label\nCharged twice,billing\nMoney back please,refund\nbroken,row,x\n")
    result = cli_sqlite("import", str(path), "-d", "t", "--json").json()
    assert result["added"] == 2
    assert result["rejections"][0]["line"] == 4


def test_unreachable_database_is_one_line(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite(
        "datasets", "list",
        extra_env={"BRANDBOT_DATABASE_URL": "postgresql://bot:hunter2@127.0.0.1:1/bb"},
    )  # fmt: skip
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot reach the database")
    assert "hunter2" not in result.err


def test_run_sets_everything_up_without_a_terminal(cli: CliRunner, tmp_path: Path) -> None:
    first = cli("run", "--json")
    assert first.code == 0, first.err
    report = first.json()
    names = {d["name"]: d for d in report["datasets"]}
    assert set(names) == {"kk_copy", "kk_tickets", "kk_replies"}
    assert names["kk_copy"]["examples"] >= 60
    assert names["kk_tickets"]["examples"] >= 400
    assert names["kk_tickets"]["labels"] == 10
    assert report["slack"].startswith("not configured")
    assert report["base_model"]["ready"] is True, report["base_model"]
    for sub in ("models", "adapters", "runs"):
        assert (tmp_path / "data" / sub).is_dir()
    second = cli("run", "--json").json()
    assert all(d["added"] == 0 and not d["created"] for d in second["sample_brand"])
    human = cli("run", stdin="")
    assert human.code == 0
    assert "kk_copy" in human.out


def test_example_file_round_trip_through_cli(cli_sqlite: CliRunner, tmp_path: Path) -> None:
    cli_sqlite("datasets", "create", "c", "--task", "draft")
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": f"b{i}"}, {"role": "assistant", "content": f"post {i}"}]} for i in range(5)],
    )  # fmt: skip
    assert cli_sqlite("import", str(src), "-d", "c", "--json").json()["added"] == 5
    out = tmp_path / "out.jsonl"
    cli_sqlite("export", "-d", "c", "-o", str(out))
    assert cli_sqlite("import", str(out), "-d", "c", "--json").json()["duplicate"] == 5


@pytest.mark.smollm2
def test_run_opens_the_console_with_scripted_input(
    cli: CliRunner, tmp_path: Path, smollm2_model: ResolvedModel
) -> None:
    # the bundled SmolLM2 the session converted once (conversion: tests/serving/test_base_model.py)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(smollm2_model.path.parent, target_is_directory=True)
    script = "\n".join(
        [
            "// a comment",
            "/brandbot help",
            "#support-tickets",
            "@tom",
            "my parcel never came",
            ":truck: 37",
            "press 99",
            "/nosuch thing",
            "quit",
        ]
    )
    result = cli("run", stdin=script + "\n")
    assert result.code == 0, result.err
    out = result.out
    assert "console chat on T0KETTLE" in out
    assert "/brandbot help" in out and "Show this list of commands." in out
    assert "you are now @tom" in out
    assert "#support-tickets @tom: my parcel never came" in out
    assert "@tom reacted :truck: on 37" in out
    assert "there is no choice 99" in out
    assert "Unknown command /nosuch thing" in out
    assert out.rstrip().endswith("bye")


def test_run_with_slack_token_but_no_mode_explains(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite("run", extra_env={"SLACK_BOT_TOKEN": "xoxb-1"})
    assert result.code == 2
    assert "SLACK_APP_TOKEN" in result.err and "--http" in result.err
    assert "xoxb-1" not in result.err


def test_forget_examples_and_stats_through_the_cli(cli: CliRunner, tmp_path: Path) -> None:
    assert cli("run", "--setup-only").code == 0
    listed = cli("examples", "list", "-d", "kk_copy", "--limit", "3", "--json").json()
    assert len(listed["examples"]) == 3 and listed["examples"][0]["brief"]
    first = listed["examples"][0]["id"]
    assert cli("examples", "brief", str(first), "Announce the new tins").code == 0
    again = cli("examples", "list", "-d", "kk_copy", "--limit", "1", "--json").json()
    assert again["examples"][0]["brief"] == "Announce the new tins"
    assert cli("examples", "brief", "999999", "x").code == 2
    stats = cli("datasets", "show", "kk_tickets", "--json").json()["counts"]
    assert stats["by_source"] == {"import": 400}
    assert stats["label_balance"] == 1.0 and stats["missing_labels"] == []
    assert stats["new_since_last_training"] == 400
    gone = cli("forget", "--user", "U0NOBODY1", "--json").json()
    assert gone == {"user": "U0NOBODY1", "examples": 0, "drafts": 0, "predictions": 0,
                    "suggestions": 0, "approvals": 0, "adapters_retired": 0,
                    "checkpoints_deleted": 0, "runs_queued": 0, "adapters": [],
                    "now_serving": {}, "deleted": [], "queued_runs": []}  # fmt: skip
    bad = cli("forget", "--user", "<@U0NOBODY1>")
    assert bad.code == 2 and "not a Slack user id" in bad.err and "nothing was erased" in bad.err


def test_report_prints_production_signals(cli: CliRunner) -> None:
    cli("datasets", "create", "c", "--task", "draft")
    data = cli("report", "-d", "c", "--json").json()
    assert (
        data["production"]["drafts_posted"] == 0
        and data["production"]["draft_revision_rate"] is None
    )
    table = cli("report", "-d", "c")
    assert table.code == 0 and "label correction rate" in table.out


def test_train_adapters_and_rollback_through_the_cli(
    cli_sqlite: CliRunner, tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "brandbot.toml").write_text(
        f'base_model = "{tiny_model_dir}"\n'
        "[training]\nepochs = 1\ncheckpoint_every = 0\nmax_length = 192\n"
    )
    assert cli_sqlite("run", "--setup-only").code == 0
    trained = cli_sqlite("train", "-d", "kk_tickets", "--json")
    assert trained.code == 0, trained.err
    summary = trained.json()
    assert summary["status"] == "succeeded" and summary["adapter"].startswith("kk_tickets-v")
    shown = cli_sqlite("report", "-d", "kk_tickets", "--json").json()
    assert shown["run"] and any("Retraining report" in line for line in shown["report"])
    assert Path(shown["chart"]).read_bytes().startswith(b"\x89PNG")
    listed = cli_sqlite("adapters", "list", "-d", "kk_tickets", "--json").json()["adapters"]
    assert [a["name"] for a in listed] == [summary["adapter"]]
    assert listed[0]["status"] in ("active", "rejected") and listed[0]["decision"]
    back = cli_sqlite("adapters", "rollback", "-d", "kk_tickets")
    if listed[0]["status"] == "active":
        assert back.code == 0 and "base model" in back.out
    else:
        assert back.code == 2 and "no active adapter" in back.err
    assert cli_sqlite("adapters", "promote", "nope-v9").code == 2
    run_eval = cli_sqlite("eval", "-d", "kk_tickets", "--json")
    assert run_eval.code == 0, run_eval.err[-3000:]
    evaluated = run_eval.json()
    assert evaluated["heldout"] > 0 and 0 <= evaluated["base"]["macro_f1"] <= 1
    assert "per_label" in evaluated["base"] and "confusion" in evaluated["base"]


@pytest.mark.usefixtures("bundled_tokenizer_dir")  # copied, not read from the GGUF again
def test_demo_smoke_runs_the_whole_loop(cli_process_sqlite: CliRunner, tmp_path: Path) -> None:
    # a real process: its exit status must survive the interpreter's shutdown (engine threads)
    result = cli_process_sqlite("demo", "--smoke", "--data-dir", str(tmp_path / "demo"))
    assert result.code == 0, result.err[-3000:]
    out = result.out
    assert out.count("Retraining report: `kk_copy`") == 1
    # the sample brand's edit pairs: the preference stage ran and the report compares models
    assert "Preference accuracy on 7 held-out pairs: base " in out and " → new " in out
    assert "Preference stage: dpo on 29 pairs" in out
    assert out.count("Retraining report: `kk_tickets`") == 1
    assert "Queued training run" in out and "No tuned adapter yet" in out
    assert "#support-tickets (thread) brandbot: " in out
    assert out.count("*Suggested reply*") >= 2  # one for each new ticket
    assert "pressed" in out and "Post reply" in out and "Reply posted by" in out
    assert "Added to kk_replies" in out  # the agent's own answer, approved with a reaction
    charts = json.loads(out.strip().splitlines()[-1])["charts"]
    assert len(charts) == 2 and all(Path(c).read_bytes().startswith(b"\x89PNG") for c in charts)


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: ")]


def test_run_says_once_that_nobody_can_approve_and_how_to_fix_it(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite("run", "--no-sample", stdin="quit\n")
    assert result.code == 0, result.err
    notes = _notes(result.err)
    assert len(notes) == 1, result.err
    assert "no admins and no approvers are configured: nobody can approve" in notes[0]
    assert "BRANDBOT_ADMINS=" in notes[0] and "--approvers" in notes[0]
    assert result.out.rstrip().endswith("bye")


def test_run_names_the_datasets_nobody_can_approve_in(cli_sqlite: CliRunner) -> None:
    assert cli_sqlite("datasets", "create", "open_copy", "--task", "draft").code == 0
    result = cli_sqlite("run", "--setup-only")  # the sample brand's datasets name approvers
    notes = _notes(result.err)
    assert len(notes) == 1, result.err
    assert "nobody can approve examples in open_copy (no approvers there)" in notes[0]


def test_run_is_quiet_about_approvers_once_someone_can_approve(cli_sqlite: CliRunner) -> None:
    assert _notes(cli_sqlite("run", "--setup-only").err) == []  # sample datasets name approvers
    admins = {"BRANDBOT_ADMINS": "U0ADMIN,U0OTHER"}
    result = cli_sqlite("run", "--no-sample", "--json", extra_env=admins)
    assert result.code == 0 and _notes(result.err) == [], result.err
