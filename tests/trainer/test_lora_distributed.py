"""Data-parallel LoRA training under ``accelerate launch``, for real: two gloo CPU processes on
the tiny model train the same run as one process whose step covers both processes'
micro-batches (``grad_accum`` x 2), write one adapter, and relay progress and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from serving.adapters import lint_adapter
from serving.base_model import read_fingerprint
from tests.trainer.test_lora import sample_examples, small_config
from trainer.checkpoints import latest_checkpoint
from trainer.launch import LaunchedTrainingFailed
from trainer.lora import train_lora


@pytest.mark.slow
def test_two_processes_train_the_single_process_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    examples = sample_examples()
    fingerprint = read_fingerprint(tiny_model_dir) or ""
    common = {"device": "cpu", "threads": 1, "checkpoint_every": 3}
    single = train_lora(
        tiny_model_dir, examples, small_config(**common, grad_accum=2), tmp_path / "single",
        served_model_name="brandbot-base", base_fingerprint=fingerprint,
    )  # fmt: skip
    calls: list[tuple[int, int, float]] = []
    ckpt = tmp_path / "ckpt"
    two = train_lora(
        tiny_model_dir, examples, small_config(**common, processes=2), tmp_path / "kk_copy-v1",
        served_model_name="brandbot-base", base_fingerprint=fingerprint,
        progress=lambda *a: calls.append(a), checkpoint_dir=ckpt,
    )  # fmt: skip

    assert two.steps == single.steps >= 4 and len(two.losses) == two.steps
    assert [c[0] for c in calls] == list(range(1, two.steps + 1))  # from the main process only
    assert [c[2] for c in calls] == two.losses
    assert two.real_tokens == single.real_tokens  # both processes' micro-batches, each once
    assert two.example_count == single.example_count == 24
    lint = lint_adapter(
        two.adapter_dir, served_model_name="brandbot-base", base_fingerprint=fingerprint,
        max_lora_rank=16,
    )  # fmt: skip
    assert lint.ok, lint.reasons
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "kk_copy-v1", "single"]
    state = latest_checkpoint(ckpt)
    assert state is not None and len(state["rng_ranks"]) == 2  # every rank's RNG, for resume

    # Each micro-batch runs the same kernels with one thread in either case, and the all-reduce
    # adds the two processes' gradients (a + b == b + a in IEEE arithmetic): the weights came
    # out bitwise equal when measured. The tolerances leave room for a reduction order that
    # differs with gloo's algorithm; the step losses travel in fp32 (measured: 5e-7 apart).
    assert two.losses == pytest.approx(single.losses, rel=1e-5)
    a = load_file(str(single.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(two.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    assert max(float(t.abs().max()) for k, t in b.items() if "lora_B" in k) > 1e-3  # it learned


@pytest.mark.slow
def test_an_error_in_the_launched_processes_is_raised_with_its_message(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = small_config(device="cpu", threads=1, processes=2, max_length=16)  # prompts too long
    with pytest.raises(LaunchedTrainingFailed, match="TooFewExamples: training needs at least"):
        train_lora(
            tiny_model_dir, sample_examples(), config, tmp_path / "out",
            served_model_name="x", base_fingerprint="f",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_launch_must_match_the_configured_processes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="one of 3 launched processes, but the config says"):
        train_lora(
            tiny_model_dir, sample_examples(), small_config(processes=2), tmp_path / "out",
            served_model_name="x", base_fingerprint="f",
        )  # fmt: skip
    assert torch.get_num_threads() >= 1
