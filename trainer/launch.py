"""Training in several processes: :func:`train_lora` re-executed under ``accelerate launch``.

The run's inputs go to the processes as a JSON spec file; the main process prints one progress
line per optimizer step (parsed back here) and writes its result, or its error, to a result
file. Inside a launched process, :func:`accelerator` joins the run and
:func:`sum_across_processes` is the one all-reduce per step (see :mod:`trainer.lora` for why
not DDP).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.checkpoints import rng_state
from trainer.config import TrainConfig
from trainer.data import PreferencePair, TrainExample

if TYPE_CHECKING:
    from trainer.lora import TrainResult

ProgressCallback = Callable[[int, int, float], None]
#: a line the launched main process prints per optimizer step: the marker, then JSON
_PROGRESS_MARK = "brandbot-train-progress "
#: set in the environment of the processes :func:`launch_train_lora` starts
LAUNCHED_ENV = "BRANDBOT_TRAIN_LAUNCHED"


class LaunchedTrainingFailed(RuntimeError):
    """Training under ``accelerate launch`` failed; the message holds the processes' error."""


def accelerator(config: TrainConfig) -> Any:
    """The ``accelerate.Accelerator`` of this rank when the process was started by a launcher
    (``accelerate launch``, torchrun: ``WORLD_SIZE > 1``), else None. The launch must match
    ``config.processes``: the step plan depends on it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if world != config.processes:
        raise ValueError(
            f"this process is one of {world} launched processes, but the config says "
            f"processes={config.processes}; launch as many processes as the config names"
        )
    from accelerate import Accelerator  # type: ignore[import-untyped]

    return Accelerator(cpu=config.resolved_device() == "cpu")


def sum_across_processes(
    accelerator: Any, params: dict[str, torch.nn.Parameter], step_loss: float
) -> float:
    """Sum every process's LoRA gradients (a process without a micro-batch in this step adds
    zeros) and step losses in one all-reduce; the gradients are replaced by the sums, in fp32
    while on the wire. Returns the step's total loss."""
    values = list(params.values())
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
            for p in values
        ]
        + [torch.tensor([step_loss], device=values[0].device)]
    )
    total = accelerator.reduce(flat, reduction="sum")
    offset = 0
    for p in values:
        n = p.numel()
        p.grad = total[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return float(total[offset])


def gather_rng(accelerator: Any) -> list[dict[str, Any]]:
    """Every process's RNG states, by rank (a collective: all processes call it)."""
    from accelerate.utils import gather_object  # type: ignore[import-untyped]

    return list(gather_object([rng_state()]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch_command(config: TrainConfig, *args: str) -> list[str]:
    """``accelerate launch`` with ``config.processes`` processes on this machine running
    ``python -m trainer.launch ARGS``: one per GPU, or gloo CPU processes without a GPU.

    ``--multi_gpu`` selects accelerate's torchrun launcher, which starts the processes on a CPU
    machine too (``Accelerator(cpu=True)`` then joins them with gloo); ``--cpu`` would not: it
    starts one process and expects MPI to start the others. Every option is given, so no
    accelerate config file is read; the rendezvous port is a free one, so concurrent runs on one
    machine do not collide."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(config.processes), "--num_machines", "1", "--multi_gpu",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "trainer.launch", *args,
    ]  # fmt: skip


def launch_train_lora(
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
    """:func:`~trainer.lora.train_lora` in ``config.processes`` processes, under
    ``accelerate launch``.

    The run's inputs go to the processes as a JSON file; the main process prints one progress
    line per step (relayed to ``progress``) and writes its :class:`TrainResult`, or its error,
    to a result file. Raises :class:`LaunchedTrainingFailed` with the error (for example a
    ``TooFewExamples`` message) or the launcher's output when a process fails.
    """
    if importlib.util.find_spec("accelerate") is None:
        raise RuntimeError(
            f"training in {config.processes} processes needs accelerate; install it with "
            "pip install 'brandbot[gpu]' (or 'accelerate>=1,<2')"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brandbot-launch-") as tmp:
        spec, result_file, log_file = (Path(tmp, n) for n in ("spec.json", "result.json", "log"))
        spec.write_text(
            json.dumps(
                {
                    "base_dir": str(base_dir),
                    "examples": [e.__dict__ for e in examples],
                    "pairs": [p.__dict__ for p in preference_pairs],
                    # resolved here: the launcher sets OMP_NUM_THREADS=1 in every process
                    "config": config.model_copy(
                        update={"threads": config.resolved_threads()}
                    ).model_dump(mode="json"),
                    "out_dir": str(out_dir),
                    "served_model_name": served_model_name,
                    "base_fingerprint": base_fingerprint,
                    "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                    "result": str(result_file),
                }
            ),
            encoding="utf-8",
        )
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, LAUNCHED_ENV: "1", "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p
        )}  # fmt: skip
        with log_file.open("w") as log:
            proc = subprocess.Popen(
                launch_command(config, str(spec)), stdout=subprocess.PIPE, stderr=log,
                text=True, env=env,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith(_PROGRESS_MARK):
                        if progress is not None:
                            step, total, loss = json.loads(line[len(_PROGRESS_MARK) :])
                            progress(int(step), int(total), float(loss))
                    else:
                        log.write(line)
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        outcome = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if proc.returncode != 0 or "error" in outcome or "result" not in outcome:
            detail = outcome.get("error") or log_file.read_text(errors="replace")[-3000:]
            raise LaunchedTrainingFailed(
                f"training in {config.processes} processes failed "
                f"(exit status {proc.returncode}): {detail}"
            )
    from trainer.lora import TrainResult

    result = dict(outcome["result"])
    result["adapter_dir"] = Path(result["adapter_dir"])
    result["duration_s"] = time.perf_counter() - started  # with the processes' start-up
    return TrainResult(**result)


def launched_main(argv: Sequence[str]) -> None:
    """One process of :func:`launch_train_lora`: ``python -m trainer.launch SPEC.json``."""
    from trainer.lora import train_lora

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    main = int(os.environ.get("RANK", "0")) == 0
    result_file = Path(spec["result"])

    def report(step: int, total: int, loss: float) -> None:
        print(_PROGRESS_MARK + json.dumps([step, total, loss]), flush=True)

    try:
        result = train_lora(
            Path(spec["base_dir"]), [TrainExample(**e) for e in spec["examples"]],
            TrainConfig(**spec["config"]), Path(spec["out_dir"]),
            served_model_name=spec["served_model_name"], base_fingerprint=spec["base_fingerprint"],
            progress=report,
            checkpoint_dir=Path(spec["checkpoint_dir"]) if spec["checkpoint_dir"] else None,
            preference_pairs=[PreferencePair(**p) for p in spec.get("pairs", [])],
        )  # fmt: skip
    except Exception as exc:
        if main:
            result_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    if main:
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
        result_file.write_text(json.dumps({"result": fields}))


if __name__ == "__main__":
    launched_main(sys.argv[1:])
