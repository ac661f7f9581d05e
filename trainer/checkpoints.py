"""Checkpoints of a LoRA run: written atomically, the newest few kept, resumed only by the same
run (same config and examples), with every RNG state so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.data import TokenizedDataset

CHECKPOINT_FORMAT = 1
_KEEP_CHECKPOINTS = 2


def trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def run_key(data: TokenizedDataset, config: TrainConfig) -> str:
    """Identifies config + data; a checkpoint is only resumed by the same run."""
    digest = hashlib.sha256(
        config.model_dump_json(exclude={"checkpoint_every", "threads"}).encode()
    )
    for example in data.examples:
        digest.update(f"{example.answer_start}:{','.join(map(str, example.input_ids))};".encode())
    return digest.hexdigest()


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``ckpt-<step>.pt`` atomically (temp file, fsync, rename) and keep only
    the newest few, so a kill at any moment leaves a complete checkpoint behind."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{state['step']:07d}.pt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    with contextlib.suppress(OSError):  # make the rename durable too
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    for old in sorted(folder.glob("ckpt-*.pt"))[:-_KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (None if there is none)."""
    for path in sorted(folder.glob("ckpt-*.pt"), reverse=True):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: S112 - an unreadable file: fall back to the one before
            continue
        if state.get("format") == CHECKPOINT_FORMAT:
            return state
    return None


def rng_state() -> dict[str, Any]:
    import numpy as np

    numpy_state: Any = np.random.get_state()
    kind, keys, pos, has_gauss, gauss = numpy_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def checkpoint_state(
    step: int,
    key: str,
    steps: list[list[int]],
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    losses: list[float],
    rng_ranks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly where this one is (with several
    processes, ``rng_ranks`` holds every process's RNG states, by rank)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "run_key": key,
        "steps": steps,
        "adapter": {n: p.detach().cpu().clone() for n, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "rng_ranks": rng_ranks or [],
        "losses": list(losses),
    }


def restore_checkpoint(
    state: dict[str, Any],
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    rank: int,
    world: int,
) -> tuple[list[float], int]:
    """Put a run back where :func:`checkpoint_state` left it (adapter weights, optimizer,
    schedule and this process's RNG states); returns the losses so far and the next step."""
    with torch.no_grad():
        for name, value in state["adapter"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rng_ranks") or []
    set_rng_state(ranks[rank] if len(ranks) == world else state["rng"])
    return list(state["losses"]), int(state["step"])
