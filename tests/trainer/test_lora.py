"""LoRA training on the tiny model: the adapter passes serving's lint, the loss is on the answer
only, and a run killed with SIGKILL resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from serving.adapters import lint_adapter
from serving.base_model import read_fingerprint
from trainer.config import TrainConfig, defaults_for
from trainer.data import TooFewExamples, TrainExample
from trainer.lora import ResumeMismatch, answer_loss, load_lora_model, train_lora

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You write social posts for Kettle & Kite."


def sample_examples(n: int = 24) -> list[TrainExample]:
    rows = (ROOT / "bot" / "sample_brand" / "copy.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for line in rows[:n]:
        messages = json.loads(line)["messages"]
        out.append(TrainExample(SYSTEM, messages[0]["content"], messages[-1]["content"]))
    return out


def small_config(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "epochs": 2,
        "threads": 1,
        "max_length": 256,
        "batch_tokens": 256,
        "learning_rate": 1e-2,
        "checkpoint_every": 2,
        "min_examples": 4,
        "rank": 4,
        "alpha": 8,
    }
    return defaults_for("draft", **{**settings, **overrides})


def test_training_writes_an_adapter_that_passes_the_lint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    calls: list[tuple[int, int, float]] = []
    fingerprint = read_fingerprint(tiny_model_dir)
    assert fingerprint
    result = train_lora(
        tiny_model_dir, sample_examples(), small_config(), tmp_path / "kk_copy-v1",
        served_model_name="SmolLM2-135M-Instruct", base_fingerprint=fingerprint,
        progress=lambda *a: calls.append(a),
    )  # fmt: skip
    lint = lint_adapter(
        result.adapter_dir,
        served_model_name="SmolLM2-135M-Instruct",
        base_fingerprint=fingerprint,
        max_lora_rank=16,
    )
    assert lint.ok, lint.reasons
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "SmolLM2-135M-Instruct"
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert len(result.losses) == result.steps == len(calls)
    assert [c[0] for c in calls] == list(range(1, result.steps + 1))
    assert {c[1] for c in calls} == {result.steps}
    assert result.losses[-1] < result.losses[0]  # it learns
    assert result.example_count == 24
    assert result.real_tokens > result.answer_tokens * 2  # both epochs, prompt tokens too
    assert result.tokens_per_s > 0
    assert result.peak_memory_mb > 0
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_the_loss_is_the_answer_only_cross_entropy(tiny_model_dir: Path) -> None:
    """Gathering answer positions before the LM head gives exactly HF's loss with -100 labels."""
    from transformers import AutoTokenizer

    from trainer.data import bucket_batches, collate, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = tokenize_examples(tokenizer, sample_examples(6), max_length=256)
    [batch] = bucket_batches([len(e) for e in data.examples], 4096)
    ids, mask, positions, targets, prefix = collate(data, batch)
    model = load_lora_model(tiny_model_dir, small_config(dtype="float32"))  # exact arithmetic
    model.eval()
    labels = torch.full_like(ids, -100)
    for r, row in enumerate(batch.rows):
        example = data.examples[row]
        labels[r, : len(example)] = torch.tensor(example.labels)
    with torch.no_grad():
        plain = answer_loss(model, ids, mask, positions, targets, 0, reduction="mean")
        shared = answer_loss(model, ids, mask, positions, targets, prefix, reduction="mean")
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert prefix > 10  # the system prompt and more run once for all rows
    assert float(plain) == pytest.approx(float(reference), rel=1e-5)
    assert float(shared) == pytest.approx(float(reference), rel=1e-5)


def test_shared_prefix_gives_the_same_gradients(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.data import bucket_batches, collate, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = tokenize_examples(tokenizer, sample_examples(6), max_length=256)
    [batch] = bucket_batches([len(e) for e in data.examples], 4096)
    model = load_lora_model(tiny_model_dir, small_config(dtype="float32"))  # exact arithmetic
    torch.manual_seed(0)  # the same B whatever ran before in this process
    with torch.no_grad():  # non-zero B so that A's gradients are non-zero too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    grads = []
    for share in (False, True):
        model.zero_grad()
        torch.autograd.backward(answer_loss(model, *collate(data, batch, share_prefix=share)))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        # fp32 summed in another order: the absolute error grows with the gradient's scale
        atol = 1e-6 * max(1.0, float(want.abs().max()))
        assert torch.allclose(want, grads[1][name], rtol=1e-4, atol=atol), name


def test_a_bf16_base_keeps_fp32_adapters_and_follows_the_fp32_gradients(
    tiny_model_dir: Path,
) -> None:
    """bf16 (the default on CPUs that multiply it in hardware) changes the base weights and the
    activations, not what is learned: LoRA weights stay fp32 and the gradients point where the
    fp32 run's do, within bf16's precision (8 bits of mantissa)."""
    from transformers import AutoTokenizer

    from trainer.data import bucket_batches, collate, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = tokenize_examples(tokenizer, sample_examples(6), max_length=256)
    [batch] = bucket_batches([len(e) for e in data.examples], 4096)
    exact = load_lora_model(tiny_model_dir, small_config(dtype="float32"))
    half = load_lora_model(tiny_model_dir, small_config(dtype="bfloat16"))
    base = half.get_base_model()
    assert base.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert base.config._attn_implementation == "eager"
    lora = {n: p for n, p in half.named_parameters() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    with torch.no_grad():  # the same adapter in both, with B non-zero so A learns too
        for name, param in exact.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
            if param.requires_grad:
                lora[name].copy_(param)
    grads = []
    for model in (exact, half):
        loss = answer_loss(model, *collate(data, batch))
        assert loss.dtype == torch.float32
        torch.autograd.backward(loss)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == lora.keys()
    for name, want in grads[0].items():
        got = grads[1][name]
        assert got.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0)
        assert float(cosine) > 0.99, name
        assert float((got - want).norm() / want.norm()) < 0.1, name


def test_too_few_examples_are_refused_before_loading_the_model(tmp_path: Path) -> None:
    with pytest.raises(TooFewExamples, match="at least 10"):
        train_lora(
            ROOT / "no-such-model-is-loaded", sample_examples(3), defaults_for("draft"),
            tmp_path / "out", served_model_name="x", base_fingerprint="f",
        )  # fmt: skip


def test_an_existing_adapter_folder_is_never_overwritten(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "kk_copy-v1").mkdir()
    (tmp_path / "kk_copy-v1" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="names are not reused"):
        train_lora(
            tiny_model_dir, sample_examples(), small_config(), tmp_path / "kk_copy-v1",
            served_model_name="x", base_fingerprint="f",
        )  # fmt: skip


TRAIN_SCRIPT = """
import json, sys, time
from pathlib import Path
from trainer.config import TrainConfig
from trainer.data import TrainExample
from trainer.lora import train_lora
spec = json.loads(Path(sys.argv[1]).read_text())
examples = [TrainExample(**e) for e in spec["examples"]]
train_lora(
    Path(spec["base"]), examples, TrainConfig(**spec["config"]), Path(spec["out"]),
    served_model_name="tiny", base_fingerprint="f", checkpoint_dir=Path(spec["ckpt"]),
    progress=lambda step, total, loss: time.sleep(0.4),
)
"""


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    examples = sample_examples()
    config = small_config(dropout=0.1)  # dropout makes the RNG state matter
    reference = train_lora(
        tiny_model_dir, examples, config, tmp_path / "reference",
        served_model_name="tiny", base_fingerprint="f",
    )  # fmt: skip
    assert reference.steps >= 6

    ckpt = tmp_path / "ckpt"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base": str(tiny_model_dir),
                "examples": [e.__dict__ for e in examples],
                "config": config.model_dump(mode="json"),
                "out": str(tmp_path / "resumed"),
                "ckpt": str(ckpt),
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(spec)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(ckpt.glob("ckpt-*.pt")):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()

    resumed = train_lora(
        tiny_model_dir, examples, config, tmp_path / "resumed",
        served_model_name="tiny", base_fingerprint="f", checkpoint_dir=ckpt,
    )  # fmt: skip
    assert 0 < resumed.resumed_from_step < resumed.steps
    a = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-5)

    with pytest.raises(ResumeMismatch, match="another config"):
        train_lora(
            tiny_model_dir, examples, small_config(dropout=0.1, seed=7), tmp_path / "other",
            served_model_name="tiny", base_fingerprint="f", checkpoint_dir=ckpt,
        )  # fmt: skip
