"""Every benchmark has a --smoke mode that CI runs, so the benchmarks cannot rot."""

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the benches' tiny models copy the session's extracted tokenizer instead of reading the GGUF
pytestmark = pytest.mark.usefixtures("bundled_tokenizer_dir")


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``bench/<script> ARGS`` as a user runs it, from the project root (600 s: a hang guard)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip


def test_import_bench_smoke() -> None:
    proc = run_bench("import_bench.py", "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| second import of the same file (adds 0) |" in proc.stdout
    assert "every round added all 500 lines the first time: yes" in proc.stdout
    assert "| bare bulk insert: examples alone |" in proc.stdout
    assert "run order: bare bare+keys brandbot" in proc.stdout


def test_bot_ack_bench_smoke_runs_the_real_http_command() -> None:
    proc = run_bench("bot_bench.py", "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every request acked under 3 s: yes" in proc.stdout
    for row in ("| raw |", "| aiohttp |", "| httpx |", "| no-op ASGI app |", "| brandbot |"):
        assert row in proc.stdout
    assert "run order: raw aiohttp httpx | noop bare ours" in proc.stdout
    assert "load average (1/5/15 min)" in proc.stdout


def test_bot_ack_bench_smoke_on_postgres(postgres_server: object) -> None:
    """Its own throw-away cluster (the fixture fails in CI without the binaries)."""
    proc = run_bench("bot_bench.py", "--smoke", "--postgres")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every request acked under 3 s: yes" in proc.stdout
    assert "The apps (PostgreSQL, client" in proc.stdout


def test_bot_ack_bench_writes_a_section_per_database() -> None:
    from bench import bot_bench

    sqlite, postgres = bot_bench.title_for(None), bot_bench.title_for("postgresql+psycopg://h/d")
    assert sqlite == "Slash-command acks (bot runtime)" and postgres != sqlite
    assert "command, PostgreSQL)" in "\n".join(bot_bench.doc_intro("postgresql+psycopg://h/d"))
    assert "--postgres --write" in bot_bench.doc_intro("postgresql://h/d")[-1]
    assert "command, SQLite)" in "\n".join(bot_bench.doc_intro(None))


def test_collect_bench_smoke_on_postgres(postgres_server: object) -> None:
    """Needs the PostgreSQL binaries (the fixture fails in CI without them)."""
    proc = run_bench("collect_bench.py", "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exactly the expected examples: yes" in proc.stdout
    assert "into a dataset of 200 examples" in proc.stdout
    assert "| bare bolt app (acks only) |" in proc.stdout and "x the bare app" in proc.stdout
    assert "| 100 | 290 (290) |" in proc.stdout  # 200 imported + 90 distinct approvals
    assert "run order: bare ours1" in proc.stdout


def test_quality_bench_smoke() -> None:
    proc = run_bench("quality_bench.py", "--smoke", "--seeds", "2", "--per-intent", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-label F1" in proc.stdout and "tuned (clinc_banking-v1)" in proc.stdout
    assert "seed 1: CLINC150 banking, 3 intents: 9 train / 15 test queries" in proc.stdout
    assert "tuned macro-F1 over 2 seed(s), 3 train queries per intent: mean" in proc.stdout


def test_eval_bench_smoke_a_batch_per_model_drafts_as_one_mixed_batch() -> None:
    proc = run_bench("eval_bench.py", "--smoke", "--compare")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "same drafts mixed as in a batch per model: yes" in proc.stdout
    assert "| drafts: base, then adapter (a batch each) |" in proc.stdout
    assert "| (compare) base and adapter in one mixed batch |" in proc.stdout
    assert "the same drafts in every run: yes" in proc.stdout
    assert "load average (1/5/15 min)" in proc.stdout


def test_eval_bench_write_refuses_a_smoke_run_before_measuring() -> None:
    proc = run_bench("eval_bench.py", "--smoke", "--write")
    assert proc.returncode == 2
    assert "--write records every held-out brief of SmolLM2 over at least 3 repeats" in proc.stderr
    assert proc.stdout == ""


# --- the bench harness (bench/harness.py) ----------------------------------------------------


def test_harness_runs_the_sides_in_turns_and_keeps_each_sides_results_in_order() -> None:
    from bench.harness import interleave

    log: list[str] = []

    def side(name: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            log.append(name)
            return {"n": log.count(name)}

        return run

    results, order = interleave({"a": side("a"), "b": side("b")}, repeats=3)
    assert log == order == ["a", "b", "a", "b", "a", "b"]
    assert [r["n"] for r in results["a"]] == [1, 2, 3]
    assert [r["n"] for r in results["b"]] == [1, 2, 3]


def test_harness_reports_the_median_and_the_range() -> None:
    from bench.harness import Spread, spread

    odd = spread([{"t": 30.0}, {"t": 10.0}, {"t": 20.5}], "t")
    assert (odd.median, odd.low, odd.high) == (20.5, 10.0, 30.0)
    even = Spread.of([1.0, 2.0, 3.0, 10.0])
    assert even.median == 2.5
    assert even.show(1) == "2.5 (1.0-10.0)"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_harness_refuses_to_write_from_a_tree_with_uncommitted_changes(tmp_path: Path) -> None:
    from bench.harness import DirtyTree, require_clean_tree

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    (repo / "untracked.txt").write_text("not part of the commit\n")
    sha = require_clean_tree(repo)  # untracked files do not change what was measured
    assert len(sha) == 40
    (repo / "docs").mkdir()
    (repo / "docs" / "benchmarks.md").write_text("# B\n")
    _git(repo, "add", "docs")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "doc")
    (repo / "docs" / "benchmarks.md").write_text("# B\n\n## A section a bench wrote\n")
    assert require_clean_tree(repo) != sha  # the benches' own output: the next bench may write
    (repo / "a.txt").write_text("two\n")
    with pytest.raises(DirtyTree, match="uncommitted changes"):
        require_clean_tree(repo)
    with pytest.raises(DirtyTree):  # not a checkout: no commit to name
        require_clean_tree(tmp_path / "nowhere")


def test_harness_replaces_only_its_own_section() -> None:
    from bench.harness import replace_section

    doc = "# B\n\n## One\n\nold one\n\n## Two\n\nold two\n"
    out = replace_section(doc, "One", ["new one", ""])
    assert out == "# B\n\n## One\n\nnew one\n\n## Two\n\nold two\n"
    assert replace_section(doc, "Three", ["x"]).endswith("old two\n\n## Three\n\nx\n")


def test_train_bench_smoke_on_every_data_set_with_provenance() -> None:
    """The training bench's --smoke mode: a tiny model on the three data sets, with the matmul
    peak and the provenance lines; TRL's side too where TRL is installed (it is not in the test
    environment: it takes minutes even on the tiny model)."""
    proc = run_bench(
        "train_bench.py", "--smoke", "--repeats", "1", "--examples", "12", "--short-examples", "12"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| brand | brandbot trainer |" in proc.stdout
    assert "| oneline | brandbot trainer |" in proc.stdout
    assert "| short | brandbot trainer |" in proc.stdout
    assert re.search(r"measured (float32|bfloat16) matmul peak", proc.stdout)
    assert "load average (1/5/15 min)" in proc.stdout and "torch " in proc.stdout
    if importlib.util.find_spec("trl") is not None:
        assert "| TRL SFTTrainer |" in proc.stdout
        assert "brandbot / TRL per real token" in proc.stdout
    else:
        assert "run order: ours | ours | ours" in proc.stdout


def test_the_training_benchs_short_pairs_are_balanced_and_held_out_apart() -> None:
    from bench.train_bench import SHORT_LINE, short_data

    train, heldout = short_data(200, 50)
    assert Counter(e.answer for e in train) == {label: 20 for label in {e.answer for e in train}}
    assert len(Counter(e.answer for e in train)) == 10
    assert Counter(e.answer for e in heldout) == {label: 5 for label in {e.answer for e in train}}
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert {e.system for e in train + heldout} == {SHORT_LINE}


def test_preference_bench_smoke_rows_and_provenance() -> None:
    proc = run_bench("preference_bench.py", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| base", "| SFT", "| SFT + dpo, sft weight 1"]
    assert "load average (1/5/15 min)" in proc.stdout and "torch " in proc.stdout
