"""Training settings: one validated object per run, with per-task defaults.

The worker builds a :class:`TrainConfig` with :func:`defaults_for` (optionally overriding a few
fields from the dataset's settings) and passes it to :func:`trainer.lora.train_lora`. The config
is recorded with the run, so every field is plain data (JSON-serialisable through
``model_dump()``), and a resumed run refuses a checkpoint written under a different config.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["draft", "classify"]
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
PreferenceMethod = Literal["dpo", "simpo"]
PreferenceReference = Literal["start", "base"]

#: the attention projections of LLaMA-like models; vLLM serves LoRA on these (and the MLP's)
ATTENTION_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")


class TrainConfig(BaseModel):
    """Every knob of a LoRA run. Invalid values raise ``pydantic.ValidationError`` whose
    messages name the field and the allowed range.

    ``batch_tokens`` bounds the tokens a micro-batch computes (rows x longest row, with a shared
    prefix counted once), so memory is predictable whatever the example lengths; an example
    longer than it gets a micro-batch of its own. ``grad_accum`` micro-batches make one optimizer
    step. ``checkpoint_every`` counts optimizer steps (0 = never). ``threads=None`` uses every
    usable core (:func:`usable_cpus`, shared among the processes on a CPU).

    ``processes > 1`` trains data-parallel in that many processes, one per GPU (or CPU processes
    with the gloo backend when there is no GPU): :func:`trainer.lora.train_lora` re-executes itself
    through ``accelerate launch``. Every process runs ``grad_accum`` micro-batches of each
    optimizer step, so a step is ``processes x grad_accum`` micro-batches: the same run as one
    process with ``grad_accum`` multiplied by ``processes``.

    The preference stage (:mod:`trainer.preference`) runs after the supervised one when a run
    gets at least ``min_preference_pairs`` usable pairs: ``preference_method`` ``dpo`` (sigmoid
    DPO against a reference: ``start`` = the adapter as the stage begins, ``base`` = the adapter
    switched off) or ``simpo`` (reference-free, length-normalised, target margin
    ``preference_gamma``); ``preference_beta=None`` takes the method's own scale (0.1 for DPO,
    2.0 for SimPO). ``preference_sft_weight`` adds that multiple of the chosen answer's per-token
    negative log-likelihood to each pair's loss (RPO, "DPO + NLL"; SimPO's paper uses the same
    term), for either method; 0 turns it off. Without it the stage widens the margin partly by
    making the posted copy itself less likely, which undoes the supervised stage's held-out
    perplexity gain that the promotion rule checks; with the default weight the stage keeps
    that gain and still learns the pairs (measured in docs/benchmarks.md, "Preference tuning").
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    rank: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ATTENTION_MODULES
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    epochs: int = Field(3, ge=1, le=100)
    max_length: int = Field(512, ge=8)
    batch_tokens: int = Field(384, ge=8)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    gradient_checkpointing: bool = False
    device: Device = "auto"
    dtype: DType = "auto"
    checkpoint_every: int = Field(50, ge=0)
    min_examples: int = Field(8, ge=1)
    processes: int = Field(1, ge=1, le=64)
    min_preference_pairs: int = Field(16, ge=1)
    preference_method: PreferenceMethod = "dpo"
    preference_reference: PreferenceReference = "start"
    preference_beta: float | None = Field(None, gt=0.0)
    preference_gamma: float = Field(0.5, ge=0.0)
    preference_learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    preference_epochs: int = Field(2, ge=1, le=100)
    preference_sft_weight: float = Field(1.0, ge=0.0, le=100.0)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("target_modules must name at least one module, e.g. q_proj")
        if len(set(value)) != len(value):
            raise ValueError(f"target_modules has duplicates: {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("dtype float16 is for GPUs; train in bfloat16 or float32 on the CPU")
        return self

    # --- resolution ---------------------------------------------------------------------------

    def resolved_beta(self) -> float:
        """``preference_beta``, or the method's usual scale: DPO's beta multiplies summed
        log-ratios (0.1), SimPO's a per-token log-probability margin (2.0)."""
        if self.preference_beta is not None:
            return self.preference_beta
        return 0.1 if self.preference_method == "dpo" else 2.0

    def resolved_device(self) -> str:
        """``cuda`` when asked for or (``auto``) when a GPU is present, else ``cpu``."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for, but torch sees no GPU")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_dtype(self) -> Any:
        """The base model's dtype (LoRA weights stay fp32 whatever it is): what was asked for;
        else bf16 on a GPU that supports it (fp16 on one that doesn't), bf16 on a CPU that
        multiplies it in hardware (:func:`cpu_bf16_is_fast`), fp32 on any other CPU."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.resolved_device() == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32

    def resolved_threads(self) -> int:
        """Torch threads per process: ``threads``, else the usable cores divided among the
        processes."""
        return self.threads or max(1, usable_cpus() // self.processes)


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16) and torch's oneDNN
    uses it: there a bf16 matmul runs several times faster than an fp32 one, which makes bf16
    the faster way to train; elsewhere bf16 is emulated and slower than fp32."""
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        cpu: Any = torch.cpu
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: assume not
        return False


def usable_cpus() -> int:
    """The cores this process may use: ``OMP_NUM_THREADS`` when it is set (the usual way to
    give a job fewer threads, which a run must not override), else the CPUs its affinity mask
    allows (a container or ``taskset`` may allow fewer than the machine has)."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: per-task defaults. ``batch_tokens=384`` keeps SmolLM2's peak memory under 2 GB without
#: gradient checkpointing, and small micro-batches cost the CPU little in speed. LoRA dropout is
#: off: it stores a dropped copy of each projection's input (memory) and costs ~8% of the time,
#: and the runs are short enough that it buys little. Drafting learns a voice from a few dozen
#: long answers: 3 epochs at 4e-4 (38% lower held-out perplexity on the sample brand where
#: 2e-4 gave 30%; docs/training.md). Classification answers are one or two tokens, so
#: there are few loss tokens per example: more epochs, a higher rate, shorter sequences, and
#: LoRA on the MLP too, which separated near-synonymous intents better than a higher rate or
#: more epochs on CLINC150's validation queries (docs/training.md, "Defaults").
_DEFAULTS: dict[str, dict[str, Any]] = {
    "draft": {
        "rank": 16,
        "alpha": 32,
        "dropout": 0.0,
        "learning_rate": 4e-4,
        "epochs": 3,
        "max_length": 512,
        "batch_tokens": 384,
        "min_examples": 10,
    },
    "classify": {
        "rank": 16,
        "alpha": 32,
        "target_modules": ATTENTION_MODULES + MLP_MODULES,
        "dropout": 0.0,
        "learning_rate": 5e-4,
        "epochs": 5,
        "max_length": 384,
        "batch_tokens": 384,
        "min_examples": 20,
    },
}


def defaults_for(task: str, **overrides: Any) -> TrainConfig:
    """The default settings for ``task`` (``draft`` or ``classify``), with ``overrides`` applied.

    Raises ``ValueError`` for an unknown task and ``pydantic.ValidationError`` for a bad override.
    """
    if task not in _DEFAULTS:
        raise ValueError(f"unknown task {task!r}; expected one of: {', '.join(_DEFAULTS)}")
    return TrainConfig(task=task, **{**_DEFAULTS[task], **overrides})
