"""Quality on public data: CLINC150's first 10 banking intents (30 train and 30 test queries
each; bench/data/README.md has the attribution). The base model zero-shot (given the label list)
against the adapter brandbot trains, both through the product's own classify path (the worker's
training, evaluation and label scoring), in one run.

    python bench/quality_bench.py            # SmolLM2-135M-Instruct on the CPU, one run
    python bench/quality_bench.py --seeds 10 # 10 runs, each a seeded train subset and training
                                             # seed: mean, standard deviation and range
    python bench/quality_bench.py --seeds 10 --per-intent 10   # 10 train queries per intent
    python bench/quality_bench.py --smoke    # a tiny random model, 3 intents x 5 queries (CI)

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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


def subset(rows: list[tuple[str, str, str]], per_intent: int, seed: int) -> list[Row]:
    """The test rows and ``per_intent`` train rows of each label, drawn with ``seed``."""
    rng = random.Random(seed)
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        if row[0] == "train":
            by_label.setdefault(row[2], []).append(row)
    train = [r for g in by_label.values() for r in rng.sample(g, min(per_intent, len(g)))]
    return train + [r for r in rows if r[0] == "test"]


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
        training: dict[str, int] = {"min_examples": 4, "seed": seed}
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
    """Print one run's table; returns the tuned s/ticket."""
    base, tuned, hyper = run["metrics"]["base"], run["metrics"]["new"], run["hyper"]
    tests = sum(1 for r in rows if r[0] == "test")
    before, after = run["load"]
    print(f"seed {seed}: CLINC150 banking, {len(labels)} intents: {len(rows) - tests} train / "
          f"{tests} test queries; whole run {run['elapsed']:.0f} s; load average {before:.1f} at "
          f"the start, {after:.1f} at the end (s/ticket is CPU time-sensitive)")  # fmt: skip
    shown = ("epochs", "learning_rate", "rank", "alpha", "target_modules", "seed")
    print("training: " + ", ".join(f"{k} {hyper[k]}" for k in shown if k in hyper))
    print(f"{'model':<26} {'accuracy':>9} {'macro-F1':>9} {'invalid':>8} {'s/ticket':>9}")
    for name, m in (("base (zero-shot)", base), (f"tuned ({tuned['name']})", tuned)):
        per = m["seconds"] / max(1, m["examples"])
        print(f"{name:<26} {m['accuracy']:9.3f} {m['macro_f1']:9.3f} {m['invalid_rate']:8.3f} "
              f"{per:9.3f}")  # fmt: skip
    print("per-label F1 (base -> tuned):")
    for label in labels:
        b = base["per_label"].get(label, {}).get("f1", 0.0)
        t = tuned["per_label"].get(label, {}).get("f1", 0.0)
        print(f"  {label:<16} {b:.2f} -> {t:.2f}")
    return float(tuned["seconds"] / max(1, tuned["examples"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--epochs", type=int, default=None,
        help="override the product's classify default (trainer/config.py) for this run",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="runs, seeds 0..N-1")
    parser.add_argument("--per-intent", type=int, default=30, help="train queries per intent")
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    parser.add_argument(
        "--keep", type=Path, default=None, metavar="DIR",
        help="put the data folders (database, adapter) in DIR and keep them, e.g. to profile",
    )  # fmt: skip
    args = parser.parse_args()
    labels, rows = load(args.smoke)
    f1s, per_ticket = [], []
    for seed in range(args.seeds):
        chosen = subset(rows, args.per_intent, seed)
        run = run_once(labels, chosen, seed, args)
        per_ticket.append(show_run(labels, chosen, run, seed))
        f1s.append(float(run["metrics"]["new"]["macro_f1"]))
    mean = statistics.fmean(f1s)
    sd = statistics.stdev(f1s) if len(f1s) > 1 else 0.0
    print(f"tuned macro-F1 over {len(f1s)} seed(s), {args.per_intent} train queries per intent: "
          f"mean {mean:.3f}, sd {sd:.3f}, range {min(f1s):.3f}-{max(f1s):.3f}; "
          f"s/ticket median {statistics.median(per_ticket):.3f}")  # fmt: skip
    met = mean > 0.9 and statistics.median(per_ticket) < 0.3
    print(f"bar (mean tuned macro-F1 > 0.9, < 0.3 s per ticket): {'met' if met else 'NOT met'}")
    return 0 if (met or args.smoke) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
