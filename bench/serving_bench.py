"""Serving benchmark: the local engine's continuous batching against one-at-a-time
``model.generate`` in the same run, plus label-scoring time.

    python bench/serving_bench.py                 # the default model (bundled SmolLM2)
    python bench/serving_bench.py --smoke         # a tiny random model, seconds (CI)
    python bench/serving_bench.py --url http://gpu:8000 --model brandbot-base   # any server

Requests arrive at staggered times (``--stagger`` seconds apart), each generating
``--max-tokens`` tokens (greedy, end-of-turn ignored so every request does the same work).
Targets (issue 5): at 8 concurrent requests at least 5x the tokens/s of one-at-a-time
``model.generate``; label scoring over 10 labels under 0.3 s per ticket.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = [
    "billing",
    "bug",
    "refund",
    "login",
    "shipping",
    "account",
    "privacy",
    "feature request",
    "sales",
    "other",
]
TOPICS = ["coffee", "tea", "bikes", "shoes", "books", "plants", "lamps", "maps", "soap", "jam"]


def brief(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    return [
        {"role": "system", "content": "You write short, warm marketing copy for small shops."},
        {"role": "user", "content": f"Write a two-sentence announcement #{i} about our {topic}."},
    ]


def ticket(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Classify the support ticket into one label."},
        {"role": "user", "content": f"Ticket {i}: I was charged twice for my {TOPICS[i % 10]}."},
    ]


@dataclass
class Timing:
    submitted: float
    first: float = 0.0
    done: float = 0.0
    tokens: int = 0


def run_concurrent(
    n: int, stagger: float, one: Callable[[int, Timing], None]
) -> tuple[float, list[Timing]]:
    """Start ``n`` requests ``stagger`` seconds apart; return (wall seconds, timings)."""
    timings = [Timing(0.0) for _ in range(n)]
    threads = []
    start = time.perf_counter()
    for i in range(n):
        target = start + i * stagger
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        timings[i].submitted = time.perf_counter()
        thread = threading.Thread(target=one, args=(i, timings[i]))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return max(t.done for t in timings) - start, timings


def local_runner(engine: Any, max_tokens: int) -> Callable[[int, Timing], None]:
    from serving.engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)

    def one(i: int, timing: Timing) -> None:
        handle = engine.chat(brief(i), params)
        for event in handle.events():
            if not timing.first and (event.delta or event.result):
                timing.first = time.perf_counter()
            if event.result is not None:
                timing.tokens = event.result.completion_tokens
        timing.done = time.perf_counter()

    return one


def http_runner(url: str, key: str | None, model: str, max_tokens: int) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx.Client(base_url=url.rstrip("/").removesuffix("/v1"), headers=headers, timeout=600)

    def one(i: int, timing: Timing) -> None:
        body = {
            "model": model,
            "messages": brief(i),
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        import json

        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if not timing.first and any(
                    (c.get("delta") or {}).get("content") for c in data.get("choices", [])
                ):
                    timing.first = time.perf_counter()
                if data.get("usage"):
                    timing.tokens = data["usage"]["completion_tokens"]
        timing.done = time.perf_counter()

    return one


def baseline_generate(model: Any, tokenizer: Any, n: int, max_tokens: int) -> float:
    """tokens/s of plain ``model.generate``, one request at a time (greedy, fixed length)."""
    import torch

    tokens = 0
    start = time.perf_counter()
    for i in range(n):
        ids = tokenizer.apply_chat_template(
            brief(i), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - start)


def summary(wall: float, timings: list[Timing]) -> dict[str, float]:
    first = [t.first - t.submitted for t in timings]
    whole = [t.done - t.submitted for t in timings]
    return {
        "tok_s": sum(t.tokens for t in timings) / wall,
        "first_p50": statistics.median(first),
        "first_max": max(first),
        "draft_p50": statistics.median(whole),
        "draft_max": max(whole),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    parser.add_argument("--url", help="benchmark this OpenAI-compatible server instead")
    parser.add_argument("--api-key", default=os.environ.get("BRANDBOT_INFERENCE_API_KEY"))
    parser.add_argument("--model", default="brandbot-base", help="model name (with --url)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between arrivals")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=os.environ.get("BRANDBOT_DATA_DIR", "data"))
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    max_tokens = args.max_tokens or (16 if args.smoke else 64)
    if args.smoke:
        levels = [1, 4]

    print(f"serving benchmark {time.strftime('%Y-%m-%d %H:%M')} on {platform.processor() or 'cpu'}"
          f", {os.cpu_count()} cores, python {platform.python_version()}")  # fmt: skip
    print(f"max_tokens={max_tokens} stagger={args.stagger}s levels={levels}")
    engine = None
    baseline = packed = 0.0
    tmp: Path | None = None
    if args.url:
        from serving.client import HttpClient

        runner = http_runner(args.url, args.api_key, args.model, max_tokens)
        client: Any = HttpClient(args.url, api_key=args.api_key, served_model_name=args.model)
        print(f"server: {args.url} model {args.model} (no in-process baseline)")
    else:
        import torch

        from serving.client import LocalClient
        from serving.engine import LocalEngine

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.smoke:
            from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer

            tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
            path = build_tiny_llama(tmp / "model", extract_bundled_tokenizer(tmp / "tok"))
            name = "tiny-llama (random weights)"
        else:
            from serving.base_model import resolve_base_model

            resolved = resolve_base_model(None, Path(args.data_dir) / "models")
            path, name = resolved.path, resolved.name
        engine = LocalEngine(path, served_name="brandbot-base", threads=args.threads)
        print(f"model: {name} ({path}), torch threads {torch.get_num_threads()}")
        runner = local_runner(engine, max_tokens)
        client = LocalClient(engine)
        runner(0, Timing(time.perf_counter()))  # warm up
        from transformers import AutoModelForCausalLM

        # the baseline: plain transformers, as loaded, one request at a time
        plain = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        n_base = 2 if args.smoke else 8
        before = baseline_generate(plain, engine.tokenizer, n_base, max_tokens)
        packed = baseline_generate(engine._base, engine.tokenizer, n_base, max_tokens)
        print(f"baseline: one-at-a-time model.generate, {n_base} requests: {before:.1f} tok/s")
        print(f"  (model.generate on the engine's oneDNN-packed weights: {packed:.1f} tok/s)")

    results = {}
    for n in levels:
        wall, timings = run_concurrent(n, args.stagger, runner)
        results[n] = summary(wall, timings)
    if engine is not None:
        # the machine may be shared: measure the baseline again; the ratios use the mean
        after = baseline_generate(plain, engine.tokenizer, n_base, max_tokens)
        baseline = (before + after) / 2
        print(f"baseline again after the engine runs: {after:.1f} tok/s; "
              f"ratios use the mean, {baseline:.1f} tok/s")  # fmt: skip
        print(f"largest batch seen: {engine.metrics.max_batch_seen}")
    print()
    print("| concurrent | tokens/s | vs generate | vs generate on packed weights "
          "| first token p50 / max (s) | draft p50 / max (s) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for n, s in results.items():
        ratio = f"{s['tok_s'] / baseline:.2f}x" if baseline else "n/a"
        ratio_packed = f"{s['tok_s'] / packed:.2f}x" if baseline else "n/a"
        print(
            f"| {n} | {s['tok_s']:.1f} | {ratio} | {ratio_packed} "
            f"| {s['first_p50']:.2f} / {s['first_max']:.2f} "
            f"| {s['draft_p50']:.2f} / {s['draft_max']:.2f} |"
        )

    tickets = 3 if args.smoke else 10
    client.classify(ticket(0), LABELS)  # warm up
    start = time.perf_counter()
    for i in range(tickets):
        verdict = client.classify(ticket(i), LABELS)
    per_ticket = (time.perf_counter() - start) / tickets
    print(f"\nlabel scoring, {len(LABELS)} labels: {per_ticket:.3f} s per ticket "
          f"(last: {verdict.label} {verdict.confidence:.2f})")  # fmt: skip
    if engine is not None:
        engine.close()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if baseline and 8 in results and not args.smoke:
        ok = results[8]["tok_s"] / baseline >= 5 and per_ticket < 0.3
        print("targets (>=5x at 8, <0.3 s per ticket):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
