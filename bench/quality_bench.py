"""Quality on public data: CLINC150's first 10 banking intents (30 train and 30 test queries
each; bench/data/README.md has the attribution). The base model zero-shot (given the label list)
against the adapter brandbot trains, both through the product's own classify path (the worker's
training, evaluation and label scoring), in one run.

    python bench/quality_bench.py            # SmolLM2-135M-Instruct on the CPU, one run
    python bench/quality_bench.py --seeds 10 # 10 runs, each a seeded train subset and training
                                             # seed: mean, standard deviation and range
    python bench/quality_bench.py --seeds 10 --per-intent 10   # 10 train queries per intent
    python bench/quality_bench.py --smoke    # a tiny random model, 3 intents x 5 queries (CI)
    python bench/quality_bench.py --seeds 10 --write   # also write the doc's section (clean tree)

With ``--seeds N`` run ``s`` (0..N-1) trains on ``--per-intent`` train queries of each intent
drawn with seed ``s`` (all 30 by default, then only their order and the training seed differ)
and trains with seed ``s``; the test queries are the same 300 every time.

Bar (issue "Evidence"): tuned macro-F1 above 0.9, under 0.3 s per ticket on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

DATA = ROOT / "bench" / "data" / "clinc150_banking10.jsonl"
Row = tuple[str, str, str]  # split, query, label
SYSTEM = "Classify the customer's banking question. Answer with exactly one of: {labels}."


def load(smoke: bool) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if smoke:
        labels = labels[:3]
        kept: list[dict[str, Any]] = []
        seen: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r["split"], r["label"])
            if r["label"] in labels and seen.get(key, 0) < 5:
                seen[key] = seen.get(key, 0) + 1
                kept.append(r)
        rows = kept
    return labels, [(r["split"], r["messages"][0]["content"], r["label"]) for r in rows]


def subset(
    rows: list[tuple[str, str, str]], per_intent: int, seed: int, heldout: str = "test"
) -> list[Row]:
    """``per_intent`` train rows of each label, drawn with ``seed``, and the ``heldout`` rows
    (``test``, or ``val`` to choose settings without looking at the test queries)."""
    rng = random.Random(seed)
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        if row[0] == "train":
            by_label.setdefault(row[2], []).append(row)
    train = [r for g in by_label.values() for r in rng.sample(g, min(per_intent, len(g)))]
    return train + [r for r in rows if r[0] == heldout]


def run_once(
    labels: list[str], rows: list[Row], seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Train and evaluate through the worker once; the run's metrics and timings."""
    from bot.settings import Settings
    from bot.storage import Database
    from bot.storage.models import TrainingRun
    from bot.storage.repositories import Datasets, Examples, Runs
    from bot.worker import Worker
    from serving.base_model import resolve_base_model
    from serving.client import LocalClient
    from serving.engine import LocalEngine
    from trainer.cleaning import content_hash, text_key

    with tempfile.TemporaryDirectory(prefix="brandbot-quality-") as tmp:
        data_dir = args.keep.resolve() / f"seed{seed}" if args.keep else Path(tmp) / "data"
        if args.smoke:
            from bot.demo import smoke_model

            base_model = str(smoke_model(Path(tmp) / "tiny"))
        else:
            base_model = str(resolve_base_model(None, Path(args.models_dir)).path)
        training: dict[str, Any] = {"min_examples": 4, "seed": seed, **args.overrides}
        epochs = 1 if args.smoke else args.epochs
        if epochs is not None:
            training["epochs"] = epochs
        settings = Settings(data_dir=data_dir, base_model=base_model, training=training)
        db = Database(settings.resolved_database_url)
        db.upgrade()
        with db.session() as s:
            ds = Datasets(s).create(
                "clinc_banking", "classify", labels=labels,
                system_prompt=SYSTEM.format(labels=", ".join(labels)),
            )  # fmt: skip
            Examples(s).insert_many([
                {"dataset_id": ds.id, "task": "classify", "text": text, "label": label,
                 "split": "train" if split == "train" else "heldout",
                 "content_hash": content_hash("classify", None, text, label),
                 "text_key": text_key(text), "source": "import"}
                for split, text, label in rows
            ])  # fmt: skip
            run = Runs(s).enqueue(ds)
            assert run is not None
            run_id = run.id
        engine = LocalEngine(Path(base_model), served_name=settings.served_model_name)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        summary = Worker(settings, db, LocalClient(engine)).run_now(run_id)
        elapsed = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        if summary.status != "succeeded":
            raise SystemExit(f"training failed (seed {seed}): {summary.reason}")
        with db.session() as s:
            finished = s.get(TrainingRun, run_id)
            assert finished is not None
            metrics, hyper = finished.metrics, finished.hyperparams
        engine.close()
    load = (load_before, load_after)
    return {"metrics": metrics, "hyper": hyper, "elapsed": elapsed, "load": load}


def show_run(labels: list[str], rows: list[Row], run: dict[str, Any], seed: int) -> float:
    """Print one run's table as it finishes; returns the tuned s/ticket."""
    base, tuned, hyper = run["metrics"]["base"], run["metrics"]["new"], run["hyper"]
    heldout = [r[0] for r in rows if r[0] != "train"]
    tests, split = len(heldout), heldout[0] if heldout else "test"
    before, after = run["load"]
    print(f"seed {seed}: CLINC150 banking, {len(labels)} intents: {len(rows) - tests} train / "
          f"{tests} {split} queries; whole run {run['elapsed']:.0f} s; load average {before:.1f} "
          f"at the start, {after:.1f} at the end (s/ticket is CPU time-sensitive)")  # fmt: skip
    print("training: " + ", ".join(f"{k} {hyper[k]}" for k in HYPER if k in hyper))
    print(f"{'model':<26} {'accuracy':>9} {'macro-F1':>9} {'invalid':>8} {'s/ticket':>9}")
    for name, m in (("base (zero-shot)", base), (f"tuned ({tuned['name']})", tuned)):
        print(f"{name:<26} {m['accuracy']:9.3f} {m['macro_f1']:9.3f} {m['invalid_rate']:8.3f} "
              f"{per_ticket(m):9.3f}")  # fmt: skip
    print("per-label F1 (base -> tuned):")
    for label in labels:
        print(f"  {label:<16} {label_f1(base, label):.2f} -> {label_f1(tuned, label):.2f}")
    return per_ticket(tuned)


HYPER = ("epochs", "learning_rate", "rank", "alpha", "target_modules")


def per_ticket(m: dict[str, Any]) -> float:
    return float(m["seconds"]) / max(1, int(m["examples"]))


def label_f1(m: dict[str, Any], label: str) -> float:
    return float(m["per_label"].get(label, {}).get("f1", 0.0))


def verdict(f1s: list[float], per_ticket_s: list[float]) -> tuple[bool, str]:
    """The bar on the mean over seeds, not on a lucky one: (met, the line that says so)."""
    mean, median = statistics.fmean(f1s), statistics.median(per_ticket_s)
    met = mean > BAR_F1 and median < BAR_SECONDS
    return met, (
        f"bar (mean tuned macro-F1 > {BAR_F1}, < {BAR_SECONDS} s per ticket): "
        f"{'met' if met else 'NOT met'}"
    )


BAR_F1, BAR_SECONDS = 0.9, 0.3


def report(
    labels: list[str], per_intent: int, runs: list[dict[str, Any]], defaults: bool
) -> list[str]:
    """The doc's tables: one row per seed, then the mean and spread, then per-label F1."""
    tests = int(runs[0]["metrics"]["new"]["examples"])
    lines = [
        f"{len(runs)} seed(s), {per_intent} train queries per intent (seed s draws the subset "
        f"and seeds the training), the same {tests} test queries each time:",
        "",
        "| seed | base accuracy | base macro-F1 | tuned accuracy | tuned macro-F1 | tuned invalid "
        "| s/ticket base / tuned | whole run, s | load average start / end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, run in enumerate(runs):
        base, tuned = run["metrics"]["base"], run["metrics"]["new"]
        lines.append(
            f"| {seed} | {base['accuracy']:.3f} | {base['macro_f1']:.3f} | "
            f"{tuned['accuracy']:.3f} | {tuned['macro_f1']:.3f} | {tuned['invalid_rate']:.3f} | "
            f"{per_ticket(base):.3f} / {per_ticket(tuned):.3f} | {run['elapsed']:.0f} | "
            f"{run['load'][0]:.1f} / {run['load'][1]:.1f} |"
        )
    f1s = [float(r["metrics"]["new"]["macro_f1"]) for r in runs]
    base_f1s = [float(r["metrics"]["base"]["macro_f1"]) for r in runs]
    seconds = [per_ticket(r["metrics"]["new"]) for r in runs]
    sd = statistics.stdev(f1s) if len(f1s) > 1 else 0.0
    lines += [
        "",
        f"tuned macro-F1 over {len(f1s)} seed(s), {per_intent} train queries per intent: "
        f"mean {statistics.fmean(f1s):.3f}, sd {sd:.3f}, range {min(f1s):.3f}-{max(f1s):.3f} "
        f"(standard error of the mean {sd / len(f1s) ** 0.5:.3f}); base (zero-shot) mean "
        f"{statistics.fmean(base_f1s):.3f}; tuned s/ticket median {statistics.median(seconds):.3f}",
        "",
        verdict(f1s, seconds)[1],
        "",
        "per-label F1, mean over the seeds (base -> tuned): "
        + ", ".join(
            f"{label} {statistics.fmean(label_f1(r['metrics']['base'], label) for r in runs):.2f}"
            f" -> {statistics.fmean(label_f1(r['metrics']['new'], label) for r in runs):.2f}"
            for label in labels
        ),
    ]
    hyper = runs[0]["hyper"]
    which = "training (the product's classify defaults)" if defaults else "training"
    lines.append(f"\n{which}: " + ", ".join(f"{k} {hyper[k]}" for k in HYPER if k in hyper))
    return lines


def title(per_intent: int) -> str:
    """The doc section a run writes: the full train set and the small one are separate."""
    if per_intent == 30:
        return TITLE
    return f"{TITLE[:-1]}, {per_intent} train queries per intent)"


TITLE = "Quality on public data (CLINC150, 10 banking intents)"
DOC_INTRO = [
    "The first 10 intents of CLINC150's `banking` domain, 30 train and 30 test queries each",
    "(`bench/data/`, CC-BY-3.0, attribution in its README). The base model zero-shot (the system",
    "prompt lists the labels) against the adapter brandbot trains, both through the product's own",
    "path: the worker trains with the product's classify defaults (`trainer/config.py`),",
    "evaluates on the 300 test queries and scores labels with the local engine in process. Each",
    "seed draws the train subset and seeds the training; the test queries are only scored, never",
    "used to choose settings (those are compared on the 200 validation queries, `--heldout val`;",
    "docs/training.md). Bar: mean tuned macro-F1 over the seeds above 0.9 (the project aims at",
    "0.93 with 30 queries per intent), median under 0.3 s per ticket (s/ticket is wall time, so",
    "it moves with the machine's load).",
    "",
    "    .venv/bin/python bench/quality_bench.py --seeds 10 --write",
    "    .venv/bin/python bench/quality_bench.py --seeds 10 --per-intent 10 --write",
    "    # --smoke: a tiny random model (CI); --epochs N, --set KEY=VALUE override the defaults",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--epochs", type=int, default=None,
        help="override the product's classify default (trainer/config.py) for this run",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="runs, seeds 0..N-1")
    parser.add_argument("--per-intent", type=int, default=30, help="train queries per intent")
    parser.add_argument(
        "--heldout", choices=("test", "val"), default="test",
        help="score the 300 test queries (the doc's numbers) or the 200 validation queries "
        "(to compare settings without choosing them on the test set)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        type=override,
        help="a training setting for this run, e.g. --set learning_rate=1e-3 "
        "--set target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    )  # fmt: skip
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    parser.add_argument(
        "--keep", type=Path, default=None, metavar="DIR",
        help="put the data folders (database, adapter) in DIR and keep them, e.g. to profile",
    )  # fmt: skip
    parser.add_argument(
        "--write", action="store_true",
        help="write the section of docs/benchmarks.md (clean tree; defaults, test queries)",
    )  # fmt: skip
    args = parser.parse_args()
    args.overrides = dict(args.overrides)
    tuned = args.epochs is not None or args.overrides or args.heldout != "test"
    if args.write and (args.smoke or tuned or args.seeds < 3):
        parser.error("--write records the product's defaults on the test queries over at "
                     "least 3 seeds: drop --smoke, --epochs, --set and --heldout, and give "
                     "--seeds 3 or more")  # fmt: skip
    if args.write:
        harness.require_clean_tree()
    section = harness.Section(title(args.per_intent), threads=torch_threads())
    labels, rows = load(args.smoke)
    runs, per_ticket_s = [], []
    for seed in range(args.seeds):
        chosen = subset(rows, args.per_intent, seed, args.heldout)
        run = run_once(labels, chosen, seed, args)
        per_ticket_s.append(show_run(labels, chosen, run, seed))
        runs.append(run)
    section.finish()
    defaults = not tuned and not args.smoke
    lines = [*report(labels, args.per_intent, runs, defaults), "", *section.provenance_lines()]
    print("\n" + "\n".join(lines))
    if args.write:
        harness.write_section(section.title, [*DOC_INTRO, "", *lines])
    met, _ = verdict([float(r["metrics"]["new"]["macro_f1"]) for r in runs], per_ticket_s)
    return 0 if (met or args.smoke) else 1


def override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as a training setting: a comma-separated value is a list, a number a
    number (the settings model validates the rest)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if "," in value:
        return key, value.split(",")
    if re.fullmatch(r"[+-]?\d+", value):
        return key, int(value)
    try:
        return key, float(value)
    except ValueError:
        return key, value


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    sys.exit(main())
