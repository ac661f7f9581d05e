"""Quality on public data: CLINC150's first 10 banking intents (30 train and 30 test queries
each; bench/data/README.md has the attribution). The base model zero-shot (given the label list)
against the adapter brandbot trains, both through the product's own classify path (the worker's
training, evaluation and label scoring), in one run.

    python bench/quality_bench.py            # SmolLM2-135M-Instruct on the CPU
    python bench/quality_bench.py --smoke    # a tiny random model, 3 intents x 5 queries (CI)

Bar (issue "Evidence"): tuned macro-F1 above 0.9, under 0.3 s per ticket on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "clinc150_banking10.jsonl"
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


def main() -> int:
    from bot.settings import Settings
    from bot.storage import Database
    from bot.storage.models import TrainingRun
    from bot.storage.repositories import Datasets, Examples, Runs
    from bot.worker import Worker
    from serving.base_model import resolve_base_model
    from serving.client import LocalClient
    from serving.engine import LocalEngine
    from trainer.cleaning import content_hash, text_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--epochs", type=int, default=None,
        help="override the product's classify default (trainer/config.py) for this run",
    )  # fmt: skip
    parser.add_argument(
        "--keep", type=Path, default=None, metavar="DIR",
        help="put the data folder (database, adapter) in DIR and keep it, e.g. to profile",
    )  # fmt: skip
    args = parser.parse_args()
    labels, rows = load(args.smoke)
    with tempfile.TemporaryDirectory(prefix="brandbot-quality-") as tmp:
        data_dir = args.keep.resolve() if args.keep else Path(tmp) / "data"
        if args.smoke:
            from bot.demo import smoke_model

            base_model = str(smoke_model(Path(tmp) / "tiny"))
        else:
            base_model = str(resolve_base_model(None, ROOT / "data" / "models").path)
        training: dict[str, int] = {"min_examples": 4}
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
            print(f"training failed: {summary.reason}")
            return 1
        with db.session() as s:
            finished = s.get(TrainingRun, run_id)
            assert finished is not None
            metrics, hyper = finished.metrics, finished.hyperparams
        engine.close()
    base, tuned = metrics["base"], metrics["new"]
    tests = sum(1 for r in rows if r[0] == "test")
    print(f"CLINC150 banking, {len(labels)} intents: {len(rows) - tests} train / {tests} test "
          f"queries; whole run {elapsed:.0f} s; load average {load_before:.1f} at the start, "
          f"{load_after:.1f} at the end (s/ticket is CPU time-sensitive)")  # fmt: skip
    shown = ("epochs", "learning_rate", "rank", "alpha", "target_modules")
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
    per_ticket = tuned["seconds"] / max(1, tuned["examples"])
    met = tuned["macro_f1"] > 0.9 and per_ticket < 0.3
    print(f"bar (tuned macro-F1 > 0.9, < 0.3 s per ticket): {'met' if met else 'NOT met'}")
    return 0 if (met or args.smoke) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
