"""``brandbot import`` and ``brandbot export``: examples in and out as chat JSONL (or CSV), and
preference pairs as prompt/chosen/rejected JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from bot.cli import exits
from bot.cli.common import (
    CliError,
    DatasetOption,
    JsonOption,
    console,
    database,
    err_console,
    print_json,
    settings,
)
from bot.gate import scrubber_for_settings
from bot.importer import export_records, import_candidates, iter_file
from bot.pairs_io import export_pair_records, import_pairs, is_pairs_file, iter_pairs_file
from bot.storage.repositories import Datasets, Examples

SHOW_REJECTIONS = 20


def import_examples(
    path: Path = typer.Argument(..., help="A .jsonl file (chat format) or, for classify, a .csv."),
    dataset: str = DatasetOption,
    as_json: bool = JsonOption,
) -> None:
    """Import examples, or preference pairs. Idempotent: the same content twice is one example.

    JSONL lines look like {"messages": [{"role": "user", "content": "brief"},
    {"role": "assistant", "content": "approved copy"}]}; classify lines also carry "label",
    equal to the assistant message. CSV rows are text,label. A file whose lines look like
    {"prompt": "brief", "chosen": "posted copy", "rejected": "model draft"} holds preference
    pairs (draft datasets).
    """
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    with database().session() as session:
        ds = Datasets(session).get(dataset)
        scrubber = scrubber_for_settings(settings())
        if is_pairs_file(path):
            pairs = iter_pairs_file(path)
            result = import_pairs(session, ds, pairs, actor="cli", scrubber=scrubber)
        else:
            rows = iter_file(path, ds.task)
            result = import_candidates(session, ds, rows, actor="cli", scrubber=scrubber)
    status, code = exits.import_status(result.added + result.duplicate, len(result.rejected))
    if as_json:
        print_json(
            {"dataset": dataset, "file": str(path), "status": status, "exit_code": code,
             **result.as_dict()}
        )  # fmt: skip
        raise typer.Exit(code)
    split = ", ".join(f"{k} {v}" for k, v in sorted(result.added_by_split.items()))
    console.print(
        f"{dataset}: added {result.added}" + (f" ({split})" if split else "")
        + f", duplicate {result.duplicate}, rejected {len(result.rejected)}"
    )  # fmt: skip
    for rejected in result.rejected[:SHOW_REJECTIONS]:
        where = f"line {rejected.line}" if rejected.line else str(path)
        console.print(f"  [yellow]rejected[/] {where}: {rejected.reason}", highlight=False)
    if len(result.rejected) > SHOW_REJECTIONS:
        console.print(f"  ... and {len(result.rejected) - SHOW_REJECTIONS} more (see --json)")
    if code == exits.NOTHING_IMPORTED:
        err_console.print(f"nothing imported from {path}", highlight=False)
    raise typer.Exit(code)


def export_examples(
    dataset: str = DatasetOption,
    split: str = typer.Option("all", "--split", help="train, heldout or all."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="File to write (default: stdout)."
    ),
    pending: bool = typer.Option(
        False,
        "--pending",
        help="Export the examples waiting for an approver instead (never "
        "trained on until approved).",
    ),
    pairs: bool = typer.Option(
        False,
        "--pairs",
        help='Export the preference pairs instead, as {"prompt", "chosen", "rejected"} JSONL.',
    ),
) -> None:
    """Export what training would use: the dataset's active (approved) examples, as chat
    JSONL. With --pending, the contributions still waiting for an approver; with --pairs,
    the preference pairs."""
    if split not in ("train", "heldout", "all"):
        raise CliError(f"--split must be train, heldout or all, not {split!r}")
    with database().session() as session:
        ds = Datasets(session).get(dataset)
        examples = Examples(session).active(
            ds.id, None if split == "all" else split, kind="preference" if pairs else None,
            status="pending" if pending else "active",
        )  # fmt: skip
        records = (
            export_pair_records(examples) if pairs
            else export_records(ds, [e for e in examples if e.kind != "preference"])
        )  # fmt: skip
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {len(lines)} {'pairs' if pairs else 'examples'} to {output}")
