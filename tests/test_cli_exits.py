"""Commands that load the engine end with exit status 0 (no SIGABRT from a live thread)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CliRunner, write_jsonl


def test_train_and_eval_exit_zero(
    cli: CliRunner, cli_process: CliRunner, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # set up in process; train and eval as real processes: their exit status after the
    # interpreter's shutdown is the point
    (tmp_path / "brandbot.toml").write_text(
        f'base_model = "{tiny_model_dir}"\n'
        "[training]\nepochs = 1\ncheckpoint_every = 0\nmax_length = 64\nmin_examples = 4\n"
    )
    cli("datasets", "create", "c", "--task", "draft")
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": f"brief {i}"},
                       {"role": "assistant", "content": f"Tea number {i} is here."}]}
         for i in range(16)],
    )  # fmt: skip
    imported = cli("import", str(src), "-d", "c", "--json")
    assert imported.code == 0 and imported.json()["added_by_split"]["heldout"] > 0
    trained = cli_process("train", "-d", "c", "--json")
    assert trained.code == 0, trained.err[-3000:]
    assert trained.json()["status"] == "succeeded"
    evaluated = cli_process("eval", "-d", "c", "--json")
    assert evaluated.code == 0, evaluated.err[-3000:]
    assert "terminate called" not in evaluated.err
    assert evaluated.json()["base"]["examples"] == evaluated.json()["heldout"]


def test_a_failed_training_run_exits_four(
    cli: CliRunner, cli_process: CliRunner, tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "brandbot.toml").write_text(
        f'base_model = "{tiny_model_dir}"\n[training]\nmin_examples = 50\n'
    )
    cli("datasets", "create", "c", "--task", "draft")
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": f"brief {i}"},
                       {"role": "assistant", "content": f"Tea number {i} is here."}]}
         for i in range(6)],
    )  # fmt: skip
    assert cli("import", str(src), "-d", "c").code == 0
    trained = cli_process("train", "-d", "c", "--json")
    assert trained.code == 4, trained.err[-3000:]
    report = trained.json()
    assert (report["status"], report["exit_code"], report["adapter"]) == ("failed", 4, None)
    assert "TooFewExamples" in report["reason"]
    human = cli_process("train", "-d", "c")
    assert human.code == 4 and "Traceback" not in human.err
    assert "failed" in human.err and "TooFewExamples" in human.err
    listed = cli("adapters", "list", "-d", "c", "--json")
    assert listed.code == 0 and listed.json() == {"adapters": []}


def test_help_lists_the_exit_codes(cli_sqlite: CliRunner) -> None:
    shown = " ".join(cli_sqlite("--help").out.split())
    for text in (
        "0 all good",
        "1 partly done",
        "2 usage or input error",
        "3 nothing imported",
        "4 the work did not succeed",
    ):
        assert text in shown


def test_import_of_a_bad_csv_takes_the_good_rows_and_exits_one(
    cli: CliRunner, tmp_path: Path
) -> None:
    cli("datasets", "create", "t", "--task", "classify", "--labels", "billing,refund")
    path = tmp_path / "t.csv"
    path.write_bytes(
        b"text,label\n"
        b"Charged twice,billing\n"  # 2
        b'"' + b"x" * (200 * 1024) + b'",billing\n'  # 3: a 200 KiB field
        b"Money back please,refund\n"  # 4
        b"nul \x00 inside,billing\n"  # 5
        b"caf\xe9 latin-1,refund\n"  # 6: not UTF-8
        b"Where is my parcel,shipping\n"  # 7: not a label
        b"Refund my order,refund\n"  # 8
    )
    result = cli("import", str(path), "-d", "t", "--json")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    report = result.json()
    assert (report["status"], report["exit_code"], report["added"]) == ("partial", 1, 3)
    reasons = {r["line"]: r["reason"] for r in report["rejections"]}
    assert sorted(reasons) == [3, 5, 6, 7]
    assert "over 128 KiB" in reasons[3]
    assert "NUL" in reasons[5]
    assert "not UTF-8" in reasons[6]
    assert "not one of the dataset's labels" in reasons[7]
    human = cli("import", str(path), "-d", "t")
    assert human.code == 1 and "Traceback" not in human.err
    assert "line 5" in human.out and "duplicate 3" in human.out


def test_import_of_a_bad_jsonl_reports_every_line(cli: CliRunner, tmp_path: Path) -> None:
    cli("datasets", "create", "c", "--task", "draft")

    def line(brief: str, post: str) -> bytes:
        record = {"messages": [{"role": "user", "content": brief},
                               {"role": "assistant", "content": post}]}  # fmt: skip
        return json.dumps(record).encode() + b"\n"

    path = tmp_path / "c.jsonl"
    path.write_bytes(
        line("a", "Good post one.")
        + line("b", "y" * (200 * 1024))  # 2: far over the text limit
        + line("c", "escaped \x00 nul")  # 3: json.dumps writes \u0000
        + line("d", "bell \x07 ring")  # 4: another control character
        + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'  # 5: not UTF-8
        + b"{oops\n"  # 6
        + line("e", "Good post two.")
    )
    result = cli("import", str(path), "-d", "c", "--json")
    assert result.code == 1 and "Traceback" not in result.err
    report = result.json()
    assert report["added"] == 2
    reasons = {r["line"]: r["reason"] for r in report["rejections"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "NUL" in reasons[3] and "U+0007" in reasons[4] and "not UTF-8" in reasons[5]


def test_import_that_takes_nothing_exits_three(cli: CliRunner, tmp_path: Path) -> None:
    cli("datasets", "create", "c", "--task", "draft")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        b'{"messages": [{"role": "assistant", "content": "Caf\xe9 au lait"}]}\n'
        b'{"messages": [{"role": "assistant", "content": "Cr\xe8me br\xfbl\xe9e"}]}\n'
    )
    result = cli("import", str(latin), "-d", "c", "--json")
    assert result.code == 3
    report = result.json()
    assert report["status"] == "nothing_imported" and report["exit_code"] == 3
    assert [r["line"] for r in report["rejections"]] == [1, 2]
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("text,label\nhello,billing\n")
    refused = cli("import", str(csv_file), "-d", "c")
    assert refused.code == 3
    assert "nothing imported" in refused.err and "classify" in refused.out
