"""The serving benchmark's report (bench/serving_report.py) on fabricated results, no model: the
tables it prints and writes, and the verdict on the rule that keeps the local engine the
embedded default only while `brandbot serve` is at least as fast as vLLM-CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness
from bench.serving_report import (
    ADAPTER,
    RULE,
    SERVED,
    TITLE,
    Measured,
    Round,
    Run,
    generation_lines,
    scoring_lines,
    section_lines,
    verdict_lines,
)

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [1, 8]
NAMES = ("local in process", "brandbot serve (HTTP)", "vLLM-CPU (HTTP)")


def side(name: str, tok_s: float, seconds: float) -> Measured:
    """Three rounds at ``tok_s`` (+-1) in every generation case and ``seconds`` per ticket."""
    out = Measured(name)
    for model in (SERVED, ADAPTER):
        for n in LEVELS:
            out.gen[(model, n)] = [
                {"tok_s": tok_s * n + d, "first_p50": 0.1 * n, "draft_p50": 2.0 * n}
                for d in (-1.0, 0.0, 1.0)
            ]
        out.cls[model] = [[seconds, seconds * 1.1], [seconds * 0.9, seconds]]
        out.picked[model] = ["billing", "shipping"]
    return out


def sides(vllm_tok_s: float = 10.0, vllm_seconds: float = 0.8) -> list[Measured]:
    """In process and brandbot serve at 20 tok/s per request and 0.2 s per ticket."""
    return [
        side(NAMES[0], 20.0, 0.2),
        side(NAMES[1], 20.0, 0.2),
        side(NAMES[2], vllm_tok_s, vllm_seconds),
    ]


BASELINES = {(m, n): [5.0 * max(n, 1)] for m in (SERVED, ADAPTER) for n in (0, *LEVELS)}
GOLD = ["billing", "refund"]


def verdict(measured: list[Measured], with_vllm: bool = True) -> str:
    lines = verdict_lines(measured, LEVELS, with_vllm)
    assert all(lines) and all(len(line) <= 100 for line in lines)  # one paragraph, wrapped
    return " ".join(lines)


def test_the_tables_hold_every_side_and_case() -> None:
    lines = generation_lines(sides(), LEVELS, BASELINES, 2, with_vllm=True)
    lines += scoring_lines(sides(), GOLD, 10, with_vllm=True)
    text = "\n".join(lines)
    assert (
        "| model | concurrent | local in process | brandbot serve (HTTP) | vLLM-CPU (HTTP) |"
        in text
    )
    assert "| vLLM / brandbot serve |" in text
    # median (min-max) of the three rounds, then the baselines and the ratios
    assert "| base | 8 | 160.0 (159.0-161.0) | 160.0 (159.0-161.0) | 80.0 (79.0-81.0) |" in text
    assert "| 0.50x |" in text
    assert "| adapter | 1 | 0.10 / 2.00 | 0.10 / 2.00 | 0.10 / 2.00 |" in text
    assert "| adapter | vLLM-CPU (HTTP) | 0.800 |" in text and "| 2/2 | 1/2 |" in text
    assert "| base | 0.200 | 0.200 (1.00x) | 0.800 (4.00x) |" in text
    assert "in every generation row: yes (4/4 rows)" in text
    assert "at least as fast as vLLM-CPU at label scoring: yes" in text


def test_the_verdict_holds_when_brandbot_serve_is_at_least_as_fast_everywhere() -> None:
    said = verdict(sides(vllm_tok_s=10.0, vllm_seconds=0.8))
    assert said.startswith(f"**{RULE}; this run: it is, in 4 of 4 generation rows and at label")
    assert "it is not" not in said and "ahead" not in said and "tie" not in said


def test_equal_speed_counts_as_at_least_as_fast() -> None:
    said = verdict(sides(vllm_tok_s=20.0, vllm_seconds=0.2))
    assert "this run: it is, in 4 of 4 generation rows and at label scoring" in said
    assert "ranges overlap in base at 1 concurrent, base at 8 concurrent" in said  # a tie


def test_the_verdict_says_not_when_vllm_is_faster_in_one_row() -> None:
    measured = sides()
    measured[2].gen[(SERVED, 1)] = [{"tok_s": t, "first_p50": 0.1, "draft_p50": 2.0}
                                    for t in (29.0, 30.0, 31.0)]  # fmt: skip
    said = verdict(measured)
    assert f"**{RULE}; this run: it is not (3 of 4 generation rows; at label scoring it is)**" in (
        said
    )
    assert "vLLM-CPU is ahead in base at 1 concurrent (30.0 vs 20.0 tok/s)." in said
    assert generation_lines(measured, LEVELS, BASELINES, 2, True)[-1].endswith(": NO (3/4 rows)")


def test_the_verdict_says_not_when_vllm_scores_labels_faster() -> None:
    said = verdict(sides(vllm_tok_s=10.0, vllm_seconds=0.1))
    assert "this run: it is not (4 of 4 generation rows; at label scoring it is not)" in said
    assert "scores a ticket faster with the base (0.100 vs 0.200 s) and the adapter" in said
    assert scoring_lines(sides(vllm_seconds=0.1), GOLD, 10, True)[-1].endswith(": NO")


def test_without_vllm_the_verdict_says_it_was_not_measured() -> None:
    said = verdict(sides()[:2], with_vllm=False)
    assert said.startswith(f"**{RULE}; this run did not measure vLLM")
    assert "it is," not in said and "it is not" not in said
    tables = "\n".join(generation_lines(sides()[:2], LEVELS, BASELINES, 2, with_vllm=False))
    assert "vLLM" not in tables  # no ratio column, no generation verdict line


def run_info() -> Run:
    section = harness.Section(
        TITLE,
        threads=2,
        started="2026-12-04 04:58",
        load_start="1.5 / 1.3 / 0.9",
        commit=("6b12c2e1ffb9e19649d746905b03316a35dcdc02", False),
    )
    section.load_end = "1.8 / 1.8 / 1.7"
    return Run(
        section=section,
        cpu="AMD EPYC",
        cores=2,
        local={"python": "3.11.7", "torch": "2.13.0+cpu"},
        model="SmolLM2-135M-Instruct",
        model_path="/models/smol",
        max_tokens=128,
        stagger=0.05,
        levels=LEVELS,
        generation=True,
        rounds=2,
        tickets=2,
        labels=10,
        vllm={"vllm-cpu": "0.32.0"},
        vllm_where="started by this run",
        vllm_up=42.0,
        vllm_command="VLLM_API_KEY=*** python -m vllm.entrypoints.openai.api_server",
        done=[Round(647.0, list(NAMES), "2.2 / 1.8 / 1.4"), Round(630.0, list(NAMES[::-1]), "2.0")],
        ended="2026-12-04 05:31",
        max_batch=8,
    )


def test_the_doc_section_has_intro_provenance_tables_and_verdict() -> None:
    body = section_lines(run_info(), sides(), BASELINES, 2, GOLD)
    text = " ".join(body)  # the prose is wrapped
    assert text.startswith("One run of `bench/serving_bench.py` drives three servers")
    assert "--write takes none of these" in text
    assert "    .venv/bin/python bench/serving_bench.py --write" in text
    assert "- commit 6b12c2e1ff; 2026-12-04 04:58-05:31 UTC" in body
    assert "1.5 / 1.3 / 0.9 at the start, 1.8 / 1.8 / 1.7 at the end" in text
    assert "- vLLM env: vllm-cpu 0.32.0; server started by this run, up in 42 s" in body
    assert "- vLLM command: `VLLM_API_KEY=*** python -m vllm.entrypoints.openai.api_server`" in body
    assert "- round 2: 630 s, order vLLM-CPU (HTTP) -> brandbot serve (HTTP) -> local" in text
    assert "1 and 8 concurrent streaming chat requests arriving 50 ms apart, 128 greedy" in text
    assert "pool all 4 tickets of a side" in text
    assert "| base | 8 | 160.0 (159.0-161.0) |" in text and "| adapter | vLLM-CPU (HTTP) |" in text
    assert f"**{RULE}; this run: it is, in 4 of 4 generation rows" in " ".join(body)
    assert body[-1] == "" and body[-2].endswith("medians over the rounds).")
    assert not any("\n" in line for line in body)


def test_the_doc_has_the_section_write_replaces() -> None:
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert f"\n## {TITLE}\n" in doc
    assert harness.replace_section(doc, TITLE, ["x"]).count(f"\n## {TITLE}\n") == 1


@pytest.mark.parametrize("flag", ["--smoke", "--no-vllm"])
def test_write_refuses_a_run_without_vllm(flag: str) -> None:
    """Before anything is measured (argparse: exit code 2), so the doc stays untouched."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving_bench.py"), "--write", flag],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--write cannot run with {flag}: the 'Serving: local engine vs vLLM-CPU'" in proc.stderr
    assert proc.stdout == ""
