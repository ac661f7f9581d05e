"""Training benchmark: brandbot's LoRA trainer against TRL's ``SFTTrainer``, side by side.

    python bench/train_bench.py              # SmolLM2-135M, the bundled default (~12 min)
    python bench/train_bench.py --smoke      # a tiny random model, seconds (CI)
    python bench/train_bench.py --write      # also write the "## Training" section of
                                             # docs/benchmarks.md
    python bench/train_bench.py --quality    # the sample brand: held-out perplexity and chrF,
                                             # base vs tuned (issue 6's bar)

Same base model, LoRA config (r16, alpha 32, no dropout, q/k/v/o), data (200 short
variable-length brief→copy pairs: the sample brand's copy pairs plus deterministic variations),
maximum length (512), optimizer (AdamW, lr 2e-4, cosine, 5% warm-up, clip 1.0), one epoch, about
8 examples per optimizer step, 2 torch threads, answer-only loss in both. Each trainer runs in its
own process so its peak memory is its own. Reported: real (non-padding) tokens/s, wall time per
epoch, peak memory, held-out answer loss (the same function scores both adapters), and achieved
FLOP/s against a torch matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.data import TrainExample  # noqa: E402

BRAND = ROOT / "bot" / "sample_brand"
THREADS = 2
BRIEF_FORMS = (
    "{b}",
    "Post: {b}",
    "Social copy, {b}",
    "{b}. Keep it short",
    "Write a post: {b}",
)


def system_prompt() -> str:
    brand = tomllib.loads((BRAND / "brand.toml").read_text(encoding="utf-8"))
    return str(brand["datasets"][0]["system_prompt"])


def sample_pairs() -> list[tuple[str, str]]:
    pairs = []
    for line in (BRAND / "copy.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        pairs.append((messages[0]["content"], messages[-1]["content"]))
    return pairs


def variations(brief: str, answer: str, k: int) -> tuple[str, str]:
    """Variation k of a pair: another wording of the brief and (for odd k) the answer cut to its
    first sentences, so lengths vary as real copy does."""
    sentences = re.split(r"(?<=[.!?])\s+", answer)
    if k % 2 and len(sentences) > 1:
        answer = " ".join(sentences[: max(1, len(sentences) - 1 - k // 2)])
    return BRIEF_FORMS[k % len(BRIEF_FORMS)].format(b=brief.rstrip(".")), answer


def is_heldout(index: int) -> bool:
    """Every fifth sample pair is held out (16 of 77): the product's hash split would hold out
    only 5 of these 77, too few to compare two trainers' held-out loss."""
    return index % 5 == 0


def bench_data(n_train: int) -> tuple[list[TrainExample], list[TrainExample]]:
    """``n_train`` training pairs and the held-out pairs (neither they nor variations of them
    are trained on)."""
    system = system_prompt()
    train_src, heldout = [], []
    for index, (brief, answer) in enumerate(sample_pairs()):
        (heldout if is_heldout(index) else train_src).append((brief, answer))
    train: list[TrainExample] = []
    k = 0
    while len(train) < n_train:
        for brief, answer in train_src:
            b, a = (brief, answer) if k == 0 else variations(brief, answer, k)
            train.append(TrainExample(system, b, a))
            if len(train) == n_train:
                break
        k += 1
    return train, [TrainExample(system, b, a) for b, a in heldout]


# --- workers (one process per trainer) -------------------------------------------------------


def run_ours(model_dir: Path, train: list[TrainExample], max_length: int) -> dict[str, Any]:
    from trainer.config import defaults_for
    from trainer.lora import train_lora

    config = defaults_for(
        "draft", epochs=1, learning_rate=2e-4, threads=THREADS, max_length=max_length, grad_accum=2
    )
    out = Path(tempfile.mkdtemp(prefix="bb-bench-ours-")) / "adapter"
    result = train_lora(
        model_dir, train, config, out, served_model_name="bench", base_fingerprint="bench"
    )
    return {
        "adapter": str(out),
        "train_s": result.real_tokens / result.tokens_per_s,
        "real_tokens": result.real_tokens,
        "computed_tokens": result.computed_tokens,
        "answer_tokens": result.answer_tokens,
        "peak_mb": result.peak_memory_mb,
        "steps": result.steps,
        "final_train_loss": result.losses[-1],
    }


def run_trl(model_dir: Path, train: list[TrainExample], max_length: int) -> dict[str, Any]:
    import resource

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(THREADS)
    rows = [
        {
            "prompt": [
                {"role": "system", "content": e.system},
                {"role": "user", "content": e.prompt},
            ],
            "completion": [{"role": "assistant", "content": e.answer}],
        }
        for e in train
    ]
    out = Path(tempfile.mkdtemp(prefix="bb-bench-trl-"))
    args = SFTConfig(
        output_dir=str(out / "run"),
        max_length=max_length,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a ratio of the total steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        completion_only_loss=True,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        seed=0,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.model.save_pretrained(str(out / "adapter"))
    return {
        "adapter": str(out / "adapter"),
        "train_s": train_s,
        "real_tokens": real_tokens,
        "peak_mb": peak,
        "steps": output.global_step,
        "final_train_loss": float(output.training_loss),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    from trainer.evaluate import answer_nll

    torch.set_num_threads(THREADS)
    train, heldout = bench_data(args.examples)
    runner = run_ours if args.worker == "ours" else run_trl
    result = runner(Path(args.model), train, args.max_length)
    nll = answer_nll(Path(args.model), heldout, adapter_dir=Path(result["adapter"]))
    result["heldout_loss"] = sum(n for n, _ in nll) / sum(t for _, t in nll)
    print("RESULT " + json.dumps(result), flush=True)


# --- the comparison --------------------------------------------------------------------------


def matmul_peak(size: int = 1536, repeat: int = 8) -> float:
    """FLOP/s of a square fp32 matmul on this machine right now (the best of a few runs)."""
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def flops_per_token(model_dir: Path) -> tuple[float, float]:
    """(FLOPs per real token, extra FLOPs per answer token) of a LoRA step on a frozen base:
    forward (2 x weights) plus the backward's input gradients (2 x weights) through the decoder's
    linear layers; the LM head counted only where the loss needs it (answer tokens). Attention
    scores and the small LoRA matrices are left out, so this is a lower bound of the work."""
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * inter
    return 4.0 * per_layer * layers, 4.0 * d * cfg["vocab_size"]


def spawn(kind: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", str(model_dir)]
    cmd += ["--examples", str(args.examples), "--max-length", str(args.max_length)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # on a shared machine, spinning OpenMP threads starve each other; both trainers get the same
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise SystemExit(f"the {kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def model_for(args: argparse.Namespace) -> tuple[Path, str]:
    if args.model:
        return Path(args.model), Path(args.model).name
    if args.smoke:
        from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer

        tmp = Path(tempfile.mkdtemp(prefix="bb-train-bench-"))
        tiny = build_tiny_llama(tmp / "tiny", extract_bundled_tokenizer(tmp / "tok"))
        return tiny, "tiny random LLaMA (smoke)"
    from serving.base_model import resolve_base_model

    resolved = resolve_base_model(None, Path(args.models_dir))
    return resolved.path, resolved.name


def compare(args: argparse.Namespace) -> None:
    model_dir, model_name = model_for(args)
    peak = matmul_peak()
    per_token, per_answer = flops_per_token(model_dir)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    kinds = ["ours"]
    if importlib.util.find_spec("trl") is not None:
        kinds.append("trl")
    else:
        print("TRL is not installed (pip install -e '.[bench]'); measuring brandbot alone")
    for kind in kinds:
        print(f"training with {kind} ...", flush=True)
        results[kind] = spawn(kind, model_dir, args)
    peak = max(peak, matmul_peak())  # the machine is shared: the better of before and after
    rows = []
    for kind, r in results.items():
        tokens_per_s = r["real_tokens"] / r["train_s"]
        computed = r.get("computed_tokens", r["real_tokens"])  # TRL: padding not counted
        work = per_token * computed + per_answer * results["ours"]["answer_tokens"]
        flops = work / r["train_s"]
        r |= {"tokens_per_s": tokens_per_s, "flops": flops}
        label = "brandbot trainer" if kind == "ours" else "TRL SFTTrainer"
        rows.append(
            f"| {label} | {tokens_per_s:.0f} | {r['train_s']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['heldout_loss']:.3f} | {flops / 1e9:.1f} ({100 * flops / peak:.0f}%) |"
        )
    table = [
        "| trainer | real tokens/s | s per epoch | peak MB | held-out answer loss | "
        "achieved GFLOP/s (of peak) |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    ours = results["ours"]
    lines = [
        f"model: {model_name}; {args.examples} training pairs, max length {args.max_length}, "
        f"1 epoch, {THREADS} threads; measured matmul peak {peak / 1e9:.1f} GFLOP/s",
        "",
        f"brandbot runs the brand system prompt shared by every example once per micro-batch: "
        f"{ours['computed_tokens']} tokens computed for {ours['real_tokens']} real tokens. "
        "Achieved FLOP/s counts the forward and input-gradient matmuls of the tokens each "
        "trainer actually computed (TRL's padding and prompt-position LM head not counted).",
        "",
        *table,
        "",
    ]
    if "trl" in results:
        trl = results["trl"]
        lines.append(
            f"ratios brandbot / TRL: tokens/s {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
            f"peak memory {ours['peak_mb'] / trl['peak_mb']:.2f}x, held-out loss "
            f"{ours['heldout_loss']:.3f} vs {trl['heldout_loss']:.3f} "
            f"({'equal or better' if ours['heldout_loss'] <= trl['heldout_loss'] else 'worse'})"
        )
    lines.append(f"total bench time {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))
    if args.write:
        write_section(lines, args)


def write_section(lines: list[str], args: argparse.Namespace) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    cpu, mem = platform.machine(), ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), cpu
        )
        total = Path("/proc/meminfo").read_text(encoding="utf-8").split()[1]
        mem = f", {int(total) / 2**20:.0f} GiB"
    load = os.getloadavg()[0]
    section = [
        "## Training",
        "",
        "brandbot's LoRA trainer against TRL's `SFTTrainer` in the same run (each in its own "
        "process), same base model, LoRA config (r16 alpha 32 on q/k/v/o, no dropout), data, "
        "maximum length and optimizer (AdamW 2e-4, cosine, 5% warm-up), ~8 examples per step, "
        "answer-only loss in both. Target: at least 2x TRL's real tokens/s at equal or better "
        "held-out loss, peak memory under 2 GB.",
        "",
        "    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/train_bench.py --write",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on a {os.cpu_count()}-core {cpu} VM{mem}, "
        f"Python {platform.python_version()} (load average {load:.1f} at the end: other work "
        "was running on the machine, and both trainers ran with OMP_WAIT_POLICY=PASSIVE):",
        "",
        *lines,
        "",
    ]
    text = doc.read_text(encoding="utf-8")
    if "\n## Training\n" in text:
        head, _, rest = text.partition("\n## Training\n")
        tail = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        text = head.rstrip("\n") + "\n\n" + "\n".join(section) + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    doc.write_text(text, encoding="utf-8")
    print(f"wrote the Training section of {doc}")


# --- sample-brand quality (issue 6's "done when") -------------------------------------------


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
    train, heldout = [], []
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model (CI)")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--quality", action="store_true", help="sample-brand base vs tuned")
    parser.add_argument("--model", help="a model folder (default: the bundled SmolLM2)")
    parser.add_argument("--models-dir", default="/tmp/bb-models", help="where to convert it")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.examples is None:
        args.examples = 24 if args.smoke else 200
    if args.worker:
        worker(args)
    elif args.quality:
        quality(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
