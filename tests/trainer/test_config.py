"""TrainConfig: per-task defaults and validation with clear errors."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from trainer.config import TrainConfig, cpu_bf16_is_fast, defaults_for, usable_cpus


def test_draft_defaults_follow_the_design() -> None:
    config = defaults_for("draft")
    assert (config.rank, config.alpha) == (16, 32)
    assert config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert config.learning_rate == pytest.approx(4e-4)
    assert config.epochs == 3
    assert config.resolved_device() in {"cpu", "cuda"}


def test_classify_defaults_train_longer_and_faster() -> None:
    draft, classify = defaults_for("draft"), defaults_for("classify")
    assert classify.epochs > draft.epochs
    assert classify.learning_rate > draft.learning_rate
    assert classify.min_examples >= draft.min_examples
    # the MLP's projections too: they separated near-synonymous intents (docs/training.md)
    assert classify.target_modules == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip


def test_overrides_apply_and_are_validated() -> None:
    assert defaults_for("draft", epochs=1, threads=1).epochs == 1
    with pytest.raises(ValidationError, match="rank"):
        defaults_for("draft", rank=0)
    with pytest.raises(ValidationError, match="extra"):
        defaults_for("draft", learning_rat=1e-3)


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task 'summarise'"):
        defaults_for("summarise")


def test_inconsistent_settings_say_what_to_change() -> None:
    with pytest.raises(ValidationError, match="target_modules must name"):
        TrainConfig(task="draft", target_modules=())
    with pytest.raises(ValidationError, match="bfloat16 or float32 on the CPU"):
        TrainConfig(task="draft", device="cpu", dtype="float16")


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_the_cpu_trains_in_bf16_where_it_multiplies_bf16_in_hardware_else_fp32() -> None:
    """Read against the kernel's own CPU flags, not the function under test."""
    import torch

    hardware = bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})
    expected = torch.bfloat16 if hardware else torch.float32
    assert TrainConfig(task="draft", device="cpu").resolved_dtype() == expected
    assert cpu_bf16_is_fast() is hardware
    asked = TrainConfig(task="draft", device="cpu", dtype="float32")
    assert asked.resolved_dtype() == torch.float32
    assert TrainConfig(task="draft", device="cpu", dtype="bfloat16").resolved_dtype() == (
        torch.bfloat16
    )


def test_config_is_plain_data() -> None:
    config = defaults_for("classify")
    assert TrainConfig.model_validate(config.model_dump()) == config


def test_preference_sft_weight_is_validated_and_on_by_default() -> None:
    assert defaults_for("draft").preference_sft_weight > 0
    assert defaults_for("draft", preference_sft_weight=0).preference_sft_weight == 0
    with pytest.raises(ValidationError, match="preference_sft_weight"):
        defaults_for("draft", preference_sft_weight=-0.5)


def test_the_supervised_weight_is_part_of_the_run_key() -> None:
    """A checkpoint written under another weight is another run's: resume refuses it."""
    from trainer.checkpoints import run_key
    from trainer.data import TokenizedDataset

    data = TokenizedDataset([], 0, 0)
    with_term, without = defaults_for("draft"), defaults_for("draft", preference_sft_weight=0)
    assert run_key(data, with_term) != run_key(data, without)


def test_threads_follow_omp_num_threads_then_the_affinity_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert usable_cpus() == 3
    assert defaults_for("draft", processes=1).resolved_threads() == 3
    assert defaults_for("draft", processes=2).resolved_threads() == 1
    assert defaults_for("draft", threads=5).resolved_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    allowed = len(os.sched_getaffinity(0))
    assert usable_cpus() == allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a count: ignored
    assert usable_cpus() == allowed
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(saved)})  # as taskset or a container would
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, saved)
