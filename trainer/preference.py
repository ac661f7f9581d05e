"""The preference stage: after supervised training, the same LoRA adapter learns from pairs.

A pair is a prompt with the answer people chose (what was posted) and one they rejected (what
the model wrote, or a variant not posted). Both answers are tokenized exactly like supervised
examples (:func:`trainer.data.tokenize_examples`), so a side's log-probability is the sum over
its answer tokens *and* the end-of-turn token, computed with the trainer's answer-only loss
(:func:`trainer.lora.answer_loss`): the two sides of a pair sit in the same micro-batch and share
their prompt prefix.

Objectives (``config.preference_method``):

- ``dpo``: ``-log sigmoid(beta * ((c - c_ref) - (r - r_ref)))`` with summed log-probabilities
  ``c``/``r`` of the chosen/rejected answers and those of a reference. The reference is not a
  second model: its log-probabilities are computed once as the stage begins and kept (in the
  checkpoints too), either with the adapter as supervised training left it (``start``) or with
  the adapter switched off, i.e. the base model (``base``).
- ``simpo``: reference-free, ``-log sigmoid(beta * (c / |c| - r / |r|) - gamma)`` on
  per-token (length-normalised) log-probabilities.

Either way ``config.preference_sft_weight * (-c / |c|)``, the chosen answer's per-token negative
log-likelihood, is added to the pair's loss (RPO's "DPO + NLL"): a supervised anchor that keeps
the stage from buying its margin by lowering the likelihood of what people posted.

The loop is the supervised one in miniature: seeded shuffles of micro-batches, ``grad_accum``
micro-batches per optimizer step, the same AdamW with warm-up and a cosine schedule
(:mod:`trainer.optim`), the same progress callback (steps counted after the supervised ones),
and checkpoints in ``<checkpoint_dir>/preference`` through :mod:`trainer.checkpoints`. The
first checkpoint is written as the stage begins, so a run killed during the stage resumes it and
does not repeat supervised training.
With several processes each runs its share of a step's micro-batches and the gradients are
summed in one all-reduce, as in :mod:`trainer.lora`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import launch as distributed
from trainer.checkpoints import (
    checkpoint_state,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    trainable,
)
from trainer.config import TrainConfig
from trainer.data import (
    MicroBatch,
    PreferencePair,
    TokenizedDataset,
    bucket_batches,
    collate,
    epoch_order,
    tokenize_examples,
)
from trainer.launch import ProgressCallback
from trainer.optim import stage_optimizer

#: the subfolder of a run's checkpoint folder that holds the preference stage's checkpoints
CHECKPOINT_SUBDIR = "preference"


@dataclass
class PreferenceData:
    """Tokenized pairs: row ``2k`` of ``data`` is pair ``k``'s chosen answer, ``2k + 1`` its
    rejected one. ``batches`` hold both rows of each of their pairs; ``steps`` lists, per
    optimizer step, the micro-batches it runs."""

    data: TokenizedDataset
    batches: list[MicroBatch]
    steps: list[list[int]]
    key: str
    skipped: int = 0

    @property
    def pairs(self) -> int:
        return len(self.data.examples) // 2


@dataclass
class PreferenceResult:
    """What the stage did: per-step losses (from step 1, including steps before a resume)."""

    pairs: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int = 0
    method: str = ""


def prepare(
    tokenizer: Any, pairs: Sequence[PreferencePair], config: TrainConfig, run_key: str
) -> PreferenceData | None:
    """The stage's data and step plan, or None when fewer than ``config.min_preference_pairs``
    pairs have both answers left after tokenizing (a pair whose prompt alone exceeds
    ``max_length`` is skipped; a long answer is cut like a supervised one)."""
    if len(pairs) < config.min_preference_pairs:
        return None
    sides = [p.as_example(a) for p in pairs for a in (p.chosen, p.rejected)]
    tokenized = tokenize_examples(tokenizer, sides, max_length=config.max_length, min_examples=0)
    by_index = {e.index: e for e in tokenized.examples}
    rows = []
    for k in range(len(pairs)):
        if 2 * k in by_index and 2 * k + 1 in by_index:
            rows += [by_index[2 * k], by_index[2 * k + 1]]
    if len(rows) // 2 < config.min_preference_pairs:
        return None
    data = TokenizedDataset(rows, tokenized.pad_id, tokenized.truncated)
    shared = 0 if config.gradient_checkpointing else data.shared_prefix
    lengths = [max(len(rows[2 * k]), len(rows[2 * k + 1])) for k in range(len(rows) // 2)]
    # two rows per pair: half the budget per pair keeps a micro-batch within batch_tokens
    by_pair = bucket_batches(lengths, max(8, config.batch_tokens // 2), shared)
    batches = [
        MicroBatch(tuple(r for k in b.rows for r in (2 * k, 2 * k + 1)), b.width) for b in by_pair
    ]
    per_step = config.grad_accum * config.processes
    steps: list[list[int]] = []
    for epoch in range(config.preference_epochs):
        order = epoch_order(len(batches), config.seed + 1, epoch)
        steps += [order[i : i + per_step] for i in range(0, len(order), per_step)]
    digest = hashlib.sha256(f"preference:{run_key};".encode())
    for example in rows:
        digest.update(f"{example.answer_start}:{','.join(map(str, example.input_ids))};".encode())
    return PreferenceData(data, batches, steps, digest.hexdigest(), len(pairs) - len(rows) // 2)


def resume_state(folder: Path | None, prepared: PreferenceData | None) -> dict[str, Any] | None:
    """The newest preference checkpoint in ``folder`` when it belongs to this run's stage
    (same supervised run, same pairs, same plan), else None."""
    if folder is None or prepared is None:
        return None
    state = latest_checkpoint(folder / CHECKPOINT_SUBDIR)
    if state is None or state["run_key"] != prepared.key or state["steps"] != prepared.steps:
        return None
    return state


def sequence_logps(
    model: Any, data: TokenizedDataset, batch: MicroBatch, *, share_prefix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the summed log-probability of its answer tokens (answer +
    end-of-turn) and how many there are."""
    from trainer.lora import answer_loss

    tensors = collate(data, batch, share_prefix=share_prefix)
    nll = answer_loss(model, *tensors, reduction="none")
    counts = torch.tensor([data.examples[r].answer_tokens for r in batch.rows], device=nll.device)
    owner = torch.repeat_interleave(torch.arange(len(batch.rows), device=nll.device), counts)
    sums = torch.zeros(len(batch.rows), device=nll.device, dtype=nll.dtype).index_add(0, owner, nll)
    return -sums, counts


def pair_loss(
    config: TrainConfig, logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """Per pair of the rows (chosen, rejected, chosen, ...): the method's loss plus the
    supervised term (``preference_sft_weight`` x the chosen side's per-token NLL)."""
    beta = config.resolved_beta()
    chosen, rejected = logps[0::2], logps[1::2]
    if config.preference_method == "dpo":
        z = beta * ((chosen - reference[0::2]) - (rejected - reference[1::2]))
    else:
        z = beta * (chosen / counts[0::2] - rejected / counts[1::2]) - config.preference_gamma
    loss = -torch.nn.functional.logsigmoid(z)
    if config.preference_sft_weight > 0:
        loss = loss - config.preference_sft_weight * chosen / counts[0::2]
    return loss


def _autocast(device: str, config: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on a GPU (LoRA weights stay fp32), nothing on the CPU or in fp32."""
    dtype = config.resolved_dtype()
    if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _adapter_off(model: Any, off: bool) -> Iterator[None]:
    if not off:
        yield
        return
    with warnings.catch_warnings(), model.disable_adapter():
        warnings.simplefilter("ignore", FutureWarning)  # as in trainer.likelihood
        yield


def reference_logps(model: Any, prepared: PreferenceData, config: TrainConfig) -> torch.Tensor:
    """Every row's summed answer log-probability under the reference, on the CPU (zeros for
    SimPO, which has none). Computed once, in eval mode, without gradients."""
    out = torch.zeros(len(prepared.data.examples), dtype=torch.float32)
    if config.preference_method != "dpo":
        return out
    device = str(model.get_base_model().device)
    was_training = model.training
    model.eval()
    share = not config.gradient_checkpointing
    with torch.no_grad(), _adapter_off(model, config.preference_reference == "base"):
        for batch in prepared.batches:
            with _autocast(device, config):
                logps, _ = sequence_logps(model, prepared.data, batch, share_prefix=share)
            out[list(batch.rows)] = logps.float().cpu()
    model.train(was_training)
    return out


def train_preference(
    model: Any,
    prepared: PreferenceData,
    config: TrainConfig,
    *,
    sft_losses: list[float],
    step_offset: int,
    total_steps: int,
    progress: ProgressCallback | None = None,
    checkpoint_dir: Path | None = None,
    resume: dict[str, Any] | None = None,
    accelerator: Any = None,
) -> PreferenceResult:
    """Run the stage on ``model`` (a peft model after supervised training) in place.

    ``progress(step_offset + step, total_steps, loss)`` follows every optimizer step. With
    ``checkpoint_dir`` the stage checkpoints as it begins and every ``config.checkpoint_every``
    steps, and resumes from its newest checkpoint (which also holds ``sft_losses`` and the
    reference log-probabilities, so a resumed run needs neither the supervised stage nor the
    reference again). ``resume`` is that checkpoint, read by :func:`resume_state` as the run
    began: every process must take the same path, and the stage's first checkpoint may appear
    while a process is still computing the reference."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    device = str(model.get_base_model().device)
    params = trainable(model)
    steps = prepared.steps
    opt = stage_optimizer(
        params, config, lr=config.preference_learning_rate, total_steps=len(steps)
    )
    folder = checkpoint_dir / CHECKPOINT_SUBDIR if checkpoint_dir is not None else None
    losses: list[float] = []
    first = 0
    state = resume
    if state is not None:
        losses, first = restore_checkpoint(
            state, params, opt.optimizer, opt.scheduler, rank=rank, world=world
        )
        reference = state["reference"]
    else:
        reference = reference_logps(model, prepared, config)

    def checkpoint(step: int) -> None:
        rng_ranks = distributed.gather_rng(accelerator) if accelerator is not None else None
        if main and folder is not None:
            state = checkpoint_state(
                step, prepared.key, steps, params, opt.optimizer, opt.scheduler, losses, rng_ranks
            )
            save_checkpoint(folder, {**state, "reference": reference, "sft_losses": sft_losses})

    if folder is not None and state is None:
        if main:  # another stage's checkpoints (other pairs): start this one afresh
            for stale in folder.glob("ckpt-*.pt"):
                stale.unlink(missing_ok=True)
        checkpoint(0)
    model.train()
    share = not config.gradient_checkpointing
    started = time.perf_counter()
    for step in range(first, len(steps)):
        group = [prepared.batches[b] for b in steps[step]]
        n_pairs = sum(len(b.rows) // 2 for b in group)
        step_loss = 0.0
        for batch in group[rank::world]:
            with _autocast(device, config):
                logps, counts = sequence_logps(model, prepared.data, batch, share_prefix=share)
            ref = reference[list(batch.rows)].to(logps.device)
            loss = pair_loss(config, logps.float(), counts, ref).sum() / n_pairs
            torch.autograd.backward(loss)
            step_loss += float(loss.detach())
        if accelerator is not None:
            step_loss = distributed.sum_across_processes(accelerator, params, step_loss)
        opt.step()
        losses.append(step_loss)
        if progress is not None and main:
            progress(step_offset + step + 1, total_steps, step_loss)
        due = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
        if folder is not None and due and step + 1 < len(steps):
            checkpoint(step + 1)
    return PreferenceResult(
        pairs=prepared.pairs,
        steps=len(steps),
        losses=losses,
        seconds=time.perf_counter() - started,
        resumed_from_step=first,
        method=config.preference_method,
    )
