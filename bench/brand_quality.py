"""Sample-brand quality (issue 6's "done when"), run as ``bench/train_bench.py --quality``:
the default draft training on the sample brand's copy pairs, base vs tuned on the held-out pairs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.train_bench import THREADS, is_heldout, model_for, sample_pairs, system_prompt
from trainer.data import TrainExample


def quality(args: argparse.Namespace) -> None:
    """Train on the sample brand's copy pairs (train split) with the default draft settings and
    compare base vs tuned on the held-out split: answer perplexity and chrF of greedy drafts."""
    from serving.client import LocalClient
    from serving.engine import LocalEngine
    from trainer.config import defaults_for
    from trainer.evaluate import BrandRules, evaluate_draft
    from trainer.lora import train_lora

    model_dir, name = model_for(args)
    system = system_prompt()
    train: list[TrainExample] = []
    heldout: list[TrainExample] = []
    for index, (brief, answer) in enumerate(sample_pairs()):
        (heldout if is_heldout(index) else train).append(TrainExample(system, brief, answer))
    out = Path(tempfile.mkdtemp(prefix="bb-quality-")) / "kk_copy-v1"
    config = defaults_for("draft", threads=THREADS, epochs=1 if args.smoke else 3)
    result = train_lora(model_dir, train, config, out, served_model_name=name, base_fingerprint="")
    rules = BrandRules(280, ("cheap", "synergy", "guys", "hurry"))
    max_new = 8 if args.smoke else 96
    with LocalEngine(model_dir, served_name=name, threads=THREADS) as engine:
        client = LocalClient(engine)
        client.load_adapter("kk_copy-v1", str(out))
        base = evaluate_draft(
            heldout, name="base", base_dir=model_dir, adapter_dir=None, client=client,
            model=None, rules=rules, max_new_tokens=max_new,
        )  # fmt: skip
        tuned = evaluate_draft(
            heldout, name="kk_copy-v1", base_dir=model_dir, adapter_dir=out, client=client,
            model="kk_copy-v1", rules=rules, max_new_tokens=max_new,
        )  # fmt: skip
    drop = 1 - tuned.perplexity / base.perplexity
    print(
        f"model {name}; {len(train)} train / {len(heldout)} held-out pairs; "
        f"{config.epochs} epochs, {result.steps} steps in {result.duration_s:.0f} s "
        f"({result.tokens_per_s:.0f} real tokens/s, peak {result.peak_memory_mb:.0f} MB)\n"
        "| model | answer perplexity | chrF | rule compliance |\n| --- | --- | --- | --- |\n"
        f"| base | {base.perplexity:.2f} | {base.chrf_mean:.1f} | {base.compliance_rate:.0%} |\n"
        f"| tuned | {tuned.perplexity:.2f} | {tuned.chrf_mean:.1f} | "
        f"{tuned.compliance_rate:.0%} |\n"
        f"perplexity {100 * drop:.0f}% lower (bar: 30%); chrF "
        f"{'not lower' if (tuned.chrf_mean or 0) >= (base.chrf_mean or 0) else 'LOWER'}"
    )
