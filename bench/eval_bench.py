"""Held-out draft evaluation benchmark: the sample brand's kk_copy held-out briefs through the
local engine, batched (``trainer.evaluate.generate_drafts``, what ``brandbot eval`` and training
use) against one request at a time (the earlier loop) in the same run, same caps.

    python bench/eval_bench.py            # SmolLM2-135M-Instruct (the bundled default)
    python bench/eval_bench.py --smoke    # a tiny random model, 4 briefs, seconds (CI)

Target (issue 23): the held-out drafts of the base and an adapter in under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bot.samples import load_sample_brand
from bot.storage import Database
from bot.storage.repositories import Datasets
from bot.worker import train_examples
from serving.client import LocalClient
from serving.engine import LocalEngine
from trainer.data import TrainExample
from trainer.evaluate import BrandRules, answer_nll, draft_token_cap, generate_drafts

ADAPTER = "kk_copy-bench"


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


def model_dirs(root: Path, smoke: bool) -> tuple[Path, Path]:
    from bot.testkit.models import build_tiny_adapter, build_tiny_llama, extract_bundled_tokenizer
    from serving.base_model import resolve_base_model

    if smoke:
        base = build_tiny_llama(root / "tiny", extract_bundled_tokenizer(root / "tokenizer"))
    else:
        base = resolve_base_model(None, root / "models").path
    # an untrained adapter with small random weights: the timing of a real one
    adapter = build_tiny_adapter(base, root / "adapter", served_name="base", scale=0.02)
    return base, adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="A tiny random model (CI).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        examples, rules = held_out(root)
        if args.smoke:
            examples = examples[:4]
        base, adapter = model_dirs(root, args.smoke)
        caps = [draft_token_cap(t, 96, rules.max_length) for _, t in answer_nll(base, examples)]
        print(f"{len(examples)} held-out kk_copy briefs, caps {min(caps)}-{max(caps)} new tokens")
        with LocalEngine(base, served_name="base") as engine:
            client = LocalClient(engine)
            client.load_adapter(ADAPTER, str(adapter))
            timings: dict[str, dict[str, float]] = {}
            same = True
            for model in (None, ADAPTER):
                started = time.perf_counter()
                singles = [
                    client.chat(e.messages(with_answer=False), model=model, max_tokens=c,
                                temperature=0.0).text.strip()
                    for e, c in zip(examples, caps, strict=True)
                ]  # fmt: skip
                one_by_one = time.perf_counter() - started
                started = time.perf_counter()
                batched = generate_drafts(client, examples, caps, model=model)
                together = time.perf_counter() - started
                same = same and batched == singles
                timings[model or "base"] = {"one": one_by_one, "batched": together}
        print("| model | one at a time (s) | batched (s) | speed-up |")
        print("| --- | --- | --- | --- |")
        for name, t in timings.items():
            print(
                f"| {name} | {t['one']:.1f} | {t['batched']:.1f} | {t['one'] / t['batched']:.1f}x |"
            )
        total_one = sum(t["one"] for t in timings.values())
        total = sum(t["batched"] for t in timings.values())
        print(f"both models: {total_one:.1f} s one at a time, {total:.1f} s batched")
        print(f"same drafts: {'yes' if same else 'NO'}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
