"""Held-out draft evaluation benchmark: the sample brand's kk_copy held-out briefs, the base
model and an adapter, through the steps of ``trainer.evaluate.evaluate_drafts`` on the local
engine (what ``brandbot eval`` and training run), timed phase by phase.

    python bench/eval_bench.py                      # SmolLM2-135M-Instruct (the bundled default)
    python bench/eval_bench.py --models-dir DIR     # keep the converted model between runs
    python bench/eval_bench.py --compare            # also both models' drafts in one mixed batch
    python bench/eval_bench.py --smoke              # a tiny random model, 4 briefs, seconds (CI)
    python bench/eval_bench.py --models-dir DIR --write   # 3 runs; write its doc section

Target (issue 23): base and adapter on the held-out briefs in under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness
from bot.samples import load_sample_brand
from bot.storage import Database
from bot.storage.repositories import Datasets
from bot.training_data import train_examples
from serving.client import LocalClient
from serving.engine import LocalEngine
from trainer.data import TrainExample
from trainer.evaluate import (
    BrandRules,
    answer_nll_many,
    chrf,
    draft_token_cap,
    generate_drafts_for,
    limit_tokens,
)

ADAPTER = "kk_copy-bench"


class Clock:
    """Wall and CPU seconds (all threads) since the last ``lap``: on a shared machine the CPU
    seconds say more than the wall clock."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def held_out(root: Path) -> tuple[list[TrainExample], BrandRules]:
    db = Database(f"sqlite:///{root / 'bench.db'}")
    db.upgrade()
    load_sample_brand(db)
    with db.session() as s:
        ds = Datasets(s).get("kk_copy")
        examples, _ = train_examples(s, ds, "heldout")
        rules = BrandRules(ds.max_length, tuple(ds.banned_words), tuple(ds.required_words))
    db.dispose()
    return examples, rules


def mixed_drafts(
    client: LocalClient, examples: list[TrainExample], caps: list[int], models: list[str | None]
) -> list[list[str]]:
    """Every model's drafts requested at once, so the engine mixes them in one batch and runs
    the adapter's rows through peft's per-row LoRA path (how evaluation drafted before)."""
    from concurrent.futures import ThreadPoolExecutor

    def draft(example: TrainExample, cap: int, model: str | None) -> str:
        reply = client.chat(
            example.messages(with_answer=False), model=model, max_tokens=cap, temperature=0.0
        )
        return reply.text.strip()

    jobs = [(e, c, m) for m in models for e, c in zip(examples, caps, strict=True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(lambda job: draft(*job), jobs))
    return [texts[i * len(examples) : (i + 1) * len(examples)] for i in range(len(models))]


def model_dirs(root: Path, smoke: bool, models_dir: Path | None) -> tuple[Path, Path]:
    from bot.testkit.models import build_tiny_adapter, build_tiny_llama, extract_bundled_tokenizer
    from serving.base_model import resolve_base_model

    if smoke:
        base = build_tiny_llama(root / "tiny", extract_bundled_tokenizer(root / "tokenizer"))
    else:
        base = resolve_base_model(None, models_dir or root / "models").path
    # an untrained adapter with small random weights: the timing of a real one
    adapter = build_tiny_adapter(base, root / "adapter", served_name="base", scale=0.02)
    return base, adapter


SECTION = "Held-out evaluation (drafts)"
TARGET_S = 30.0
DOC_INTRO = [
    "What `brandbot eval` and training run for a copy dataset (`trainer.evaluate.evaluate_drafts`)"
    ", phase by phase on the local engine: the sample brand's kk_copy held-out briefs, the base "
    "model and a small random LoRA adapter standing in for a trained one, answer perplexity of "
    "both in one pass, then a batch of greedy drafts per model (capped at the dataset's length "
    "limit in tokens). Each repeat starts its own engine. Target (issue 23): both models' "
    "evaluation under 30 s on 2 cores, engine start included.",
    "",
    "    .venv/bin/python bench/eval_bench.py --models-dir data/models --write",
]


def measure(
    examples: list[TrainExample], rules: BrandRules, base: Path, adapter: Path, compare: bool
) -> tuple[dict[str, tuple[float, float]], list[list[str]], list[int], int | None, bool]:
    """One run of what ``evaluate_drafts`` does, timed phase by phase: the phases' (wall, CPU)
    seconds, the drafts, their caps, the length limit in tokens, and whether the mixed batch
    (``compare``) gave the same drafts."""
    timings: dict[str, tuple[float, float]] = {}
    clock, whole = Clock(), Clock()
    with LocalEngine(base, served_name="base") as engine:
        client = LocalClient(engine)
        client.load_adapter(ADAPTER, str(adapter))
        timings["engine start + adapter load"] = clock.lap()
        spent: list[float] = []
        nll = answer_nll_many(base, examples, [None, adapter], seconds=spent)
        timings["perplexity: base and adapter, one load"] = clock.lap()
        timings["perplexity: base"] = (spent[0], float("nan"))
        timings["perplexity: adapter"] = (spent[1], float("nan"))
        tokens = [t for _, t in nll[0]]
        refs = [(e.answer, t) for e, t in zip(examples, tokens, strict=True)]
        limit = limit_tokens(rules.max_length, refs)
        caps = [draft_token_cap(t, 96, limit) for t in tokens]
        clock.lap()
        drafts = generate_drafts_for(client, examples, caps, [None, ADAPTER])
        timings["drafts: base, then adapter (a batch each)"] = clock.lap()
        timings["both models, engine start included"] = whole.lap()
        same = True
        if compare:  # the previous way: one mixed batch, the LoRA per row
            mixed = mixed_drafts(client, examples, caps, [None, ADAPTER])
            timings["(compare) base and adapter in one mixed batch"] = clock.lap()
            same = mixed == drafts
    return timings, drafts, caps, limit, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="A tiny random model (CI).")
    parser.add_argument("--models-dir", type=Path, help="Where the converted model is kept.")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="Also time both models' drafts in one mixed batch (per-row LoRA) and compare.",
    )
    parser.add_argument("--briefs", type=int, help="Only the first N held-out briefs.")
    parser.add_argument("--repeats", type=int, help="Runs, each with its own engine (>= 3).")
    parser.add_argument("--write", action="store_true", help="Write docs/benchmarks.md.")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.smoke else 3)
    if args.write and (args.smoke or args.briefs or repeats < 3):
        parser.error("--write records every held-out brief of SmolLM2 over at least 3 repeats")
    if args.write:
        harness.require_clean_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    section = harness.Section(SECTION)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        examples, rules = held_out(root)
        if args.smoke:
            examples = examples[:4]
        elif args.briefs:
            examples = examples[: args.briefs]
        base, adapter = model_dirs(root, args.smoke, args.models_dir)
        runs = []
        for _ in range(repeats):
            runs.append(measure(examples, rules, base, adapter, args.compare))
    section.finish()
    timings = [r[0] for r in runs]
    drafts, caps, limit = runs[0][1], runs[0][2], runs[0][3]
    lines = [
        f"{len(examples)} held-out kk_copy briefs, caps {min(caps)}-{max(caps)} new tokens "
        f"(length limit {rules.max_length} characters = {limit} tokens); medians of {repeats} "
        "runs (min-max in brackets)",
        "",
        "| phase | wall s | CPU s (all threads) |",
        "| --- | --- | --- |",
    ]
    for phase in timings[0]:
        wall = harness.Spread.of([t[phase][0] for t in timings]).show(1)
        cpus = [t[phase][1] for t in timings]
        cpu = "-" if cpus[0] != cpus[0] else harness.Spread.of(cpus).show(1)
        lines.append(f"| {phase} | {wall} | {cpu} |")
    total = harness.Spread.of([t["both models, engine start included"][0] for t in timings])
    verdict = "met" if total.median < TARGET_S else "NOT met"
    lines += ["", f"- target: both models under {TARGET_S:.0f} s: {verdict} ({total.median:.1f} s)"]
    if args.compare:
        same = all(r[4] for r in runs)
        lines.append(f"- same drafts mixed as in a batch per model: {'yes' if same else 'NO'}")
    same_runs = all(r[1] == drafts for r in runs)
    lines.append(f"- the same drafts in every run: {'yes' if same_runs else 'NO'}")
    for name, texts in zip(("base", "adapter"), drafts, strict=True):
        score = sum(chrf(d, e.answer) for d, e in zip(texts, examples, strict=True))
        within = sum(not rules.violations(d) for d in texts)
        lines.append(
            f"- {name}: chrF {score / len(texts):.1f}, {within}/{len(texts)} within the rules"
        )
    lines += ["", *section.provenance_lines()]
    print("\n".join(lines))
    if args.write:
        harness.write_section(SECTION, [*DOC_INTRO, "", *lines])


if __name__ == "__main__":
    main()
