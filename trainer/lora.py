"""LoRA training: a short, plain loop over length-bucketed micro-batches, with checkpoints.

Why a hand-written loop instead of ``transformers.Trainer``/TRL: the loss is on answer tokens
only, so the decoder runs to hidden states and the vocabulary projection (49k x 576 for SmolLM2,
a third of the model's arithmetic per token) is applied only at the positions that predict an
answer token. Prompt positions never produce logits. With length bucketing (little padding) this
is where the speed comes from; docs/training.md has the numbers.

Contract of :func:`train_lora`: it takes examples and settings, writes a PEFT adapter folder that
passes ``serving.adapters.lint_adapter`` (``base_model_name_or_path`` = the served model name, and
``brandbot_adapter.json`` with the base weights' fingerprint), and returns a :class:`TrainResult`.
With ``checkpoint_dir`` it saves its full state every ``config.checkpoint_every`` optimizer steps
and, when called again with the same folder, config and examples, resumes from the last
checkpoint: the result equals an uninterrupted run with the same seed (tested after SIGKILL).
With ``preference_pairs`` (at least ``config.min_preference_pairs``) the same adapter then goes
through the preference stage (:mod:`trainer.preference`), with its own checkpoints and resume.

Several GPUs (``config.processes > 1``): :func:`train_lora` re-executes itself through
``accelerate launch --num_processes N`` (:mod:`trainer.launch`; gloo CPU processes when there is
no GPU). Checkpoints and resuming are :mod:`trainer.checkpoints`. Each process runs every N-th
micro-batch of each optimizer step of the shared, deterministic step plan; after the step's
backward passes the LoRA gradients (and the step's loss) are summed across processes in one
all-reduce, so every process applies the same update to the
same weights, and the sum is exactly the gradient one process would have accumulated over the
whole step. Only the main process reports progress and writes checkpoints and the adapter.
Why not ``Accelerator.prepare`` (DDP): DDP syncs gradients through hooks set up in the wrapped
module's ``forward``, but the loop runs the decoder and the LM head separately (logits only at
answer positions), and a step's last micro-batches can leave a process idle, which DDP cannot
express without a dummy pass. One all-reduce of the small LoRA gradient per step is the same
arithmetic with fewer collectives.
"""

from __future__ import annotations

import inspect
import os
import random
import resource
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serving.adapter_checksums import write_manifest
from serving.adapters import write_adapter_meta
from trainer import launch as distributed
from trainer import preference
from trainer.checkpoints import (
    checkpoint_state,
    latest_checkpoint,
    restore_checkpoint,
    run_key,
    save_checkpoint,
    trainable,
)
from trainer.config import TrainConfig
from trainer.data import (
    PreferencePair,
    TokenizedDataset,
    TooFewExamples,
    TrainExample,
    bucket_batches,
    collate,
    epoch_order,
    tokenize_examples,
)
from trainer.head_loss import head_loss
from trainer.launch import LAUNCHED_ENV, LaunchedTrainingFailed, ProgressCallback
from trainer.optim import stage_optimizer


class ResumeMismatch(RuntimeError):
    """The checkpoint folder belongs to a run with another config or other examples."""


@dataclass
class TrainResult:
    """What a run produced. ``losses`` has one mean answer-token loss per optimizer step (from
    step 1, including steps done before a resume); ``real_tokens``/``tokens_per_s`` count
    non-padding tokens processed by *this* call, ``computed_tokens`` the tokens that actually ran
    through the model (a shared prefix runs once per micro-batch); ``peak_memory_mb`` is the
    process's peak RSS on the CPU, or the peak CUDA allocation on a GPU. The ``preference_*``
    fields describe the preference stage (``preference_pairs`` = 0: it did not run); its
    losses are per optimizer step too, and not in ``losses``."""

    adapter_dir: Path
    losses: list[float]
    steps: int
    real_tokens: int
    tokens_per_s: float
    duration_s: float
    peak_memory_mb: float
    example_count: int
    answer_tokens: int = 0
    computed_tokens: int = 0
    resumed_from_step: int = 0
    truncated: int = 0
    dropped: list[int] = field(default_factory=list)
    preference_pairs: int = 0
    preference_method: str = ""
    preference_steps: int = 0
    preference_losses: list[float] = field(default_factory=list)
    preference_seconds: float = 0.0
    preference_resumed_from_step: int = 0


# --- model --------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed every RNG the run touches (LoRA init, dropout, shuffles)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_lora_model(base_dir: Path, config: TrainConfig, device: str | None = None) -> Any:
    """The base model on ``device`` (default: ``config``'s) and ``config``'s dtype, frozen, with
    fresh LoRA modules in fp32 (peft keeps adapter weights fp32 under a 16-bit base and casts
    around them). A bf16 base on the CPU uses eager attention: for these short rows it beats
    SDPA's CPU kernels, whose bf16 backward is slow."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    loader: Any = AutoModelForCausalLM
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
    device = device or config.resolved_device()
    dtype = config.resolved_dtype()
    eager = device.startswith("cpu") and dtype == torch.bfloat16
    kwargs = {"attn_implementation": "eager"} if eager else {}
    model = loader.from_pretrained(str(base_dir), dtype=dtype, **kwargs)
    model.to(device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def answer_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    prefix: int = 0,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """Cross-entropy of the answer tokens, computing vocabulary logits only where needed.

    ``model`` is a peft model or a plain causal LM. The decoder runs to hidden states; the rows at
    ``positions`` (flat indices into ``[rows * width]``) go through the LM head (summed: a chunk
    of rows at a time, :func:`trainer.head_loss.head_loss`). With
    ``prefix > 0`` the first ``prefix`` tokens (the same in every row) run once, and their keys and
    values serve every row's remaining tokens (not with gradient checkpointing, which drops the
    cache: pass 0 then).
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, device = causal_lm.get_decoder(), causal_lm.device
    ids, mask, positions = input_ids.to(device), attention_mask.to(device), positions.to(device)
    if prefix > 0:
        from transformers import DynamicCache

        rows, width = ids.shape
        cache = DynamicCache(config=causal_lm.config)
        decoder(input_ids=ids[:1, :prefix], **{_cache_kwarg(decoder): cache}, use_cache=True)
        layers: list[Any] = list(cache.layers)
        for layer in layers:
            layer.keys = layer.keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
        hidden = decoder(
            input_ids=ids[:, prefix:],
            attention_mask=mask,
            position_ids=torch.arange(prefix, width, device=device).expand(rows, -1),
            use_cache=True,
            **{_cache_kwarg(decoder): cache},
        ).last_hidden_state
        positions = (positions // width) * (width - prefix) + positions % width - prefix
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    return head_loss(picked, causal_lm.get_output_embeddings(), targets.to(device), reduction)


def _cache_kwarg(decoder: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def plan_steps(data: TokenizedDataset, config: TrainConfig) -> tuple[list[Any], list[list[int]]]:
    """The micro-batches and, per optimizer step, which of them it runs (in order).

    Each epoch visits every micro-batch once in a seeded shuffle; ``grad_accum x processes``
    consecutive micro-batches form a step (an epoch's last step may have fewer). Process ``r``
    of ``n`` runs the step's micro-batches ``r, r + n, ...``."""
    shared = 0 if config.gradient_checkpointing else data.shared_prefix
    batches = bucket_batches([len(e) for e in data.examples], config.batch_tokens, shared)
    per_step = config.grad_accum * config.processes
    steps: list[list[int]] = []
    for epoch in range(config.epochs):
        order = epoch_order(len(batches), config.seed, epoch)
        steps += [order[i : i + per_step] for i in range(0, len(order), per_step)]
    return batches, steps


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the run -------------------------------------------------------------------------------------


def train_lora(
    base_dir: Path,
    examples: Sequence[TrainExample],
    config: TrainConfig,
    out_dir: Path,
    *,
    served_model_name: str,
    base_fingerprint: str,
    progress: ProgressCallback | None = None,
    checkpoint_dir: Path | None = None,
    preference_pairs: Sequence[PreferencePair] = (),
) -> TrainResult:
    """Train a LoRA adapter on ``examples`` and save it to ``out_dir`` (which must not exist).

    Raises :class:`~trainer.data.TooFewExamples` before loading the model when there are fewer
    than ``config.min_examples`` usable examples, and :class:`ResumeMismatch` when
    ``checkpoint_dir`` holds another run's checkpoints. ``progress(step, total_steps, loss)`` is
    called after every optimizer step, the preference stage's counted after the supervised ones.
    With at least ``config.min_preference_pairs`` usable ``preference_pairs`` the adapter then
    learns from them (:func:`trainer.preference.train_preference`); with fewer the stage is
    skipped.

    With ``config.processes > 1``, called in a single process, it runs itself under
    ``accelerate launch`` (:func:`trainer.launch.launch_train_lora`) and returns the main
    process's result;
    called in each of ``config.processes`` launched processes, it is one data-parallel rank.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"the adapter folder {out_dir} already exists; names are not reused")
    if len(examples) < config.min_examples:  # refuse before loading anything
        raise TooFewExamples(len(examples), config.min_examples)
    accelerator = distributed.accelerator(config)
    if config.processes > 1 and accelerator is None:
        if os.environ.get(LAUNCHED_ENV):  # never launch again from a launched process
            raise LaunchedTrainingFailed(
                f"launched for {config.processes} processes, but this one is not part of a "
                "distributed run (WORLD_SIZE is unset)"
            )
        return distributed.launch_train_lora(
            base_dir, examples, config, out_dir,
            served_model_name=served_model_name, base_fingerprint=base_fingerprint,
            progress=progress, checkpoint_dir=checkpoint_dir, preference_pairs=preference_pairs,
        )  # fmt: skip
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    torch.set_num_threads(config.resolved_threads())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    data = tokenize_examples(
        tokenizer, examples, max_length=config.max_length, min_examples=config.min_examples
    )
    batches, steps = plan_steps(data, config)
    seed_everything(config.seed)
    device = str(accelerator.device) if accelerator else config.resolved_device()
    model = load_lora_model(Path(base_dir), config, device)
    model.train()
    params = trainable(model)
    opt = stage_optimizer(params, config, lr=config.learning_rate, total_steps=len(steps))
    key = run_key(data, config)
    prepared = preference.prepare(tokenizer, preference_pairs, config, key)
    total = len(steps) + (len(prepared.steps) if prepared else 0)
    losses: list[float] = []
    first = 0
    if (later := preference.resume_state(checkpoint_dir, prepared)) is not None:
        losses, first = list(later["sft_losses"]), len(steps)  # the supervised stage is done
    elif checkpoint_dir is not None and (state := latest_checkpoint(checkpoint_dir)) is not None:
        if state["run_key"] != key or state["steps"] != steps:
            raise ResumeMismatch(
                f"{checkpoint_dir} holds checkpoints of a run with another config or other "
                "examples; use a fresh checkpoint folder"
            )
        losses, first = restore_checkpoint(
            state, params, opt.optimizer, opt.scheduler, rank=rank, world=world
        )

    real_tokens = computed = 0
    train_started = time.perf_counter()
    for step in range(first, len(steps)):
        group = [batches[b] for b in steps[step]]
        n_answer = sum(data.examples[r].answer_tokens for b in group for r in b.rows)
        step_loss = 0.0
        for batch in group[rank::world]:
            tensors = collate(data, batch, share_prefix=not config.gradient_checkpointing)
            loss = answer_loss(model, *tensors) / n_answer
            loss.backward()
            step_loss += float(loss.detach())
            real_tokens += int(tensors.attention_mask.sum())
            computed += int(tensors.attention_mask[:, tensors.prefix :].sum()) + tensors.prefix
        if accelerator is not None:
            step_loss = distributed.sum_across_processes(accelerator, params, step_loss)
        opt.step()
        losses.append(step_loss)
        if progress is not None and main:
            progress(step + 1, total, step_loss)
        due = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
        if checkpoint_dir is not None and due and step + 1 < len(steps):
            rng_ranks = distributed.gather_rng(accelerator) if accelerator is not None else None
            if main:
                state = checkpoint_state(
                    step + 1, key, steps, params, opt.optimizer, opt.scheduler, losses, rng_ranks
                )
                save_checkpoint(checkpoint_dir, state)
    train_time = time.perf_counter() - train_started
    stage = preference.PreferenceResult()
    if prepared is not None:
        stage = preference.train_preference(
            model, prepared, config, sft_losses=losses, step_offset=len(steps),
            total_steps=total, progress=progress, checkpoint_dir=checkpoint_dir, resume=later,
            accelerator=accelerator,
        )  # fmt: skip
    if accelerator is not None:
        totals = accelerator.reduce(torch.tensor([real_tokens, computed], device=device), "sum")
        real_tokens, computed = (int(v) for v in totals.tolist())

    if main:
        save_adapter(
            model, out_dir, served_model_name=served_model_name, fingerprint=base_fingerprint
        )
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank returns once the adapter exists
    return TrainResult(
        adapter_dir=out_dir,
        losses=losses,
        steps=len(steps),
        real_tokens=real_tokens,
        tokens_per_s=real_tokens / train_time if train_time > 0 else 0.0,
        duration_s=time.perf_counter() - started,
        peak_memory_mb=peak_memory_mb(device),
        example_count=len(data.examples),
        computed_tokens=computed,
        answer_tokens=data.answer_tokens,
        resumed_from_step=first,
        truncated=data.truncated,
        dropped=data.dropped,
        preference_pairs=stage.pairs,
        preference_method=stage.method,
        preference_steps=stage.steps,
        preference_losses=stage.losses,
        preference_seconds=stage.seconds,
        preference_resumed_from_step=stage.resumed_from_step,
    )


def save_adapter(model: Any, out_dir: Path, *, served_model_name: str, fingerprint: str) -> Path:
    """``save_pretrained`` into a temp sibling, add the fingerprint file and the checksum manifest,
    rename into place, so ``out_dir`` is either absent or a complete adapter that the serving lint
    accepts."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.peft_config["default"].base_model_name_or_path = served_model_name
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        write_adapter_meta(tmp, base_fingerprint=fingerprint, base_name=served_model_name)
        write_manifest(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked at the start)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
