"""Preference tuning benchmark: the sample brand's kk_copy with its edit pairs, base → SFT →
SFT + preference stage, held-out preference accuracy and mean margin, and the training time.

    python bench/preference_bench.py                   # SmolLM2-135M-Instruct (~15 min, 2 cores)
    python bench/preference_bench.py --models-dir DIR  # keep the converted model between runs
    python bench/preference_bench.py --smoke           # a tiny random model, 1 epoch (CI)

The data is what the product trains on: the sample brand loaded through the gate into a fresh
SQLite database, its train and held-out splits (``bot.training_data``). Both adapters run the
same seeded supervised stage with the dataset's training defaults; the second then runs the
preference stage (``trainer.preference``) on the train pairs. The held-out pairs are scored
exactly as evaluation scores them (``trainer.evaluate.score_pairs``); intervals are the paired
bootstrap the promotion rule uses, against the base model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import provenance
from bot.samples import load_sample_brand
from bot.storage import Database
from bot.storage.repositories import Datasets
from bot.training_data import preference_pairs, train_examples
from trainer.config import defaults_for
from trainer.evaluate import Scorecard, paired_bootstrap, score_pairs
from trainer.lora import train_lora
from trainer.pair_metrics import mean_margin, preference_accuracy


def sample_data(root: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """kk_copy's train examples, train pairs and held-out pairs, as the worker reads them."""
    db = Database(f"sqlite:///{root / 'bench.db'}")
    db.upgrade()
    load_sample_brand(db)
    with db.session() as s:
        ds = Datasets(s).get("kk_copy")
        train, _ = train_examples(s, ds, "train")
        train_pairs, _ = preference_pairs(s, ds, "train")
        heldout_pairs, _ = preference_pairs(s, ds, "heldout")
    db.dispose()
    return train, train_pairs, heldout_pairs


def base_dir(root: Path, smoke: bool, models_dir: Path | None) -> Path:
    from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer
    from serving.base_model import resolve_base_model

    if smoke:
        return build_tiny_llama(root / "tiny", extract_bundled_tokenizer(root / "tokenizer"))
    return resolve_base_model(None, models_dir or root / "models").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, one epoch")
    parser.add_argument("--models-dir", type=Path, help="where the bundled model is converted")
    parser.add_argument("--method", choices=("dpo", "simpo"), help="the stage's objective")
    parser.add_argument(
        "--no-sft-row", action="store_true", help="skip the SFT-only adapter (half the time)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brandbot-pref-bench-") as tmp:
        root = Path(tmp)
        train, train_pairs, heldout_pairs = sample_data(root)
        base = base_dir(root, args.smoke, args.models_dir)
        overrides: dict[str, Any] = {"checkpoint_every": 0}
        if args.smoke:
            overrides.update(epochs=1, preference_epochs=1, min_examples=4)
        if args.method:
            overrides["preference_method"] = args.method
        config = defaults_for("draft", **overrides)
        common: dict[str, Any] = {"served_model_name": "base", "base_fingerprint": "bench"}
        sft_s, sft_steps = 0.0, 0
        if not args.no_sft_row:
            started = time.perf_counter()
            sft_steps = train_lora(base, train, config, root / "sft", **common).steps
            sft_s = time.perf_counter() - started
        started = time.perf_counter()
        pref = train_lora(
            base, train, config, root / "pref", preference_pairs=train_pairs, **common
        )
        both_s = time.perf_counter() - started
        models = [("base", None), ("SFT", root / "sft"), ("SFT + preference", root / "pref")]
        if args.no_sft_row:
            del models[1]
        cards = [Scorecard(name, "draft", []) for name, _ in models]
        score_pairs(cards, heldout_pairs, [d for _, d in models], base_dir=base)
        rows = []
        for card in cards:
            items = card.pair_items
            ci = paired_bootstrap(cards[0].pair_items, items, preference_accuracy)
            rows.append(
                f"| {card.name} | {preference_accuracy(items):.2f} | {mean_margin(items):+.4f} | "
                f"{ci.diff:+.2f} ({ci.low:+.2f} to {ci.high:+.2f}) |"
            )
        sha, dirty = provenance.commit()
        versions = json.dumps(provenance.local_versions())
        print(f"commit {sha}{' (dirty tree)' if dirty else ''}; {versions}")
        print(f"model: {'tiny random LLaMA' if args.smoke else base.name}; {len(train)} train "
              f"examples, {len(train_pairs)} train pairs, {len(heldout_pairs)} held-out pairs; "
              f"method {config.preference_method}, {config.preference_epochs} epochs")  # fmt: skip
        print()
        print("| model | held-out preference accuracy | mean margin (nats/token) | "
              "accuracy vs base (90% CI) |")  # fmt: skip
        print("| --- | --- | --- | --- |")
        print("\n".join(rows))
        print()
        print(f"training: SFT alone {sft_s:.0f} s ({sft_steps} steps); SFT + preference "
              f"{both_s:.0f} s, of which the preference stage {pref.preference_seconds:.0f} s "
              f"({pref.preference_steps} steps on {pref.preference_pairs} pairs)")  # fmt: skip


if __name__ == "__main__":
    main()
