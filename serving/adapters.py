"""Adapter deployment: lint, load under an immutable versioned name, verify, canary, rollback.

vLLM loads some adapters it should refuse and silently serves base-model output for others
(docs/serving.md lists the cases), so nothing reaches the server before :func:`lint_adapter`
passes, and nothing is used before :func:`canary` proves the adapter changes the model's output.

Every adapter folder written by the trainer carries ``brandbot_adapter.json`` with the
fingerprint of the base weights it was trained on (:func:`write_adapter_meta`); the lint
compares it with the served base's, which catches a server running other weights under the
same served name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.adapter_checksums import verify_adapter_files
from serving.client import InferenceClient, InferenceError, InferenceUnavailable

ADAPTER_META = "brandbot_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: the values vLLM accepts for ``--max-lora-rank``
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: LoRA target modules vLLM supports, by ``model_type``
_LLAMA_LIKE = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
SUPPORTED_TARGETS: dict[str, frozenset[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
}
#: a fixed prompt for the canary: the first answer token's distribution must move
CANARY_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You write short marketing copy."},
    {"role": "user", "content": "Write a one-line tagline for our new product."},
]
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}-v[1-9][0-9]*$")


def write_adapter_meta(folder: Path, *, base_fingerprint: str, base_name: str) -> Path:
    """Record which base weights an adapter was trained on (the trainer calls this)."""
    path = folder / ADAPTER_META
    meta = {"base_fingerprint": base_fingerprint, "base_model": base_name}
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that admits ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


@dataclass
class LintResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    rank: int | None = None


def lint_adapter(
    folder: Path,
    *,
    served_model_name: str,
    base_fingerprint: str | None,
    max_lora_rank: int,
    model_type: str = "llama",
    checksum: str | None = None,
) -> LintResult:
    """Check that vLLM will load ``folder`` correctly onto the served base. Every problem found
    is listed (not just the first), each as one sentence that says what to change. ``checksum``
    is the one recorded at training (:mod:`serving.adapter_checksums`)."""
    config_path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        return LintResult(False, [f"{folder} is not a folder"])
    reasons = verify_adapter_files(folder, checksum)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return LintResult(False, [*reasons, f"{ADAPTER_CONFIG} is missing or unreadable: {exc}"])
    rank = config.get("r")
    if config.get("peft_type") != "LORA":
        reasons.append(f"peft_type is {config.get('peft_type')!r}; only LORA is served")
    if not isinstance(rank, int) or rank < 1:
        reasons.append(f"the rank r={rank!r} is not a positive integer")
    elif rank > max_lora_rank:
        reasons.append(
            f"rank {rank} is above the server's --max-lora-rank {max_lora_rank}; "
            "train with a lower rank or raise the server's limit"
        )
    if config.get("use_dora"):
        reasons.append("DoRA adapters (use_dora) are not supported by vLLM")
    if config.get("lora_bias"):
        reasons.append("lora_bias adapters are not supported by vLLM")
    if config.get("modules_to_save"):
        reasons.append(
            f"modules_to_save={config['modules_to_save']!r} is not supported by vLLM "
            "(it would need fully trained copies of those modules)"
        )
    if config.get("trainable_token_indices"):
        reasons.append("trainable_token_indices (added tokens) are not supported by vLLM")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in {"gaussian"}:
        reasons.append(f"init_lora_weights={init!r} (PiSSA/LoftQ-style) is not supported")
    supported = SUPPORTED_TARGETS.get(model_type)
    targets = config.get("target_modules")
    if isinstance(targets, str):
        reasons.append("target_modules is a pattern; list the module names explicitly")
    elif not targets:
        reasons.append("target_modules is empty")
    elif supported is not None:
        unknown = sorted(set(targets) - supported)
        if unknown:
            reasons.append(
                f"target modules {unknown} are not LoRA targets vLLM supports for "
                f"{model_type} (supported: {', '.join(sorted(supported))})"
            )
    base_name = config.get("base_model_name_or_path")
    if base_name != served_model_name:
        reasons.append(
            f"base_model_name_or_path is {base_name!r}, not the served model name "
            f"{served_model_name!r}: the adapter was trained for another base"
        )
    reasons += _check_fingerprint(folder, base_fingerprint)
    reasons += _check_weights(folder, rank if isinstance(rank, int) else None)
    return LintResult(not reasons, reasons, rank if isinstance(rank, int) else None)


def _check_fingerprint(folder: Path, expected: str | None) -> list[str]:
    meta_path = folder / ADAPTER_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        recorded = meta.get("base_fingerprint") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return [f"{ADAPTER_META} (the base weights fingerprint) is missing or unreadable"]
    if not recorded:
        return [f"{ADAPTER_META} records no base_fingerprint"]
    if expected is not None and recorded != expected:
        return [
            f"the adapter was trained on base weights {str(recorded)[:12]}…, but the server's "
            f"base is {expected[:12]}…: it was trained on another base"
        ]
    return []


def _check_weights(folder: Path, rank: int | None) -> list[str]:
    """The safetensors file opens, every tensor reads, is finite, and has LoRA's shape."""
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        return [f"{ADAPTER_WEIGHTS} is missing (adapters must be saved as safetensors)"]
    try:
        import torch
        from safetensors import safe_open

        reasons: list[str] = []
        with safe_open(str(path), framework="pt") as fh:
            names = list(fh.keys())
            if not names:
                return [f"{ADAPTER_WEIGHTS} holds no tensors"]
            for name in names:
                tensor = fh.get_tensor(name)
                if "embed_tokens" in name or "lm_head" in name or "lora_embedding" in name:
                    reasons.append(
                        f"the adapter changes {name.split('.')[-2]} (added tokens or resized "
                        "embeddings), which vLLM does not support"
                    )
                    break
                if not bool(torch.isfinite(tensor.float()).all()):
                    reasons.append(f"the tensor {name} holds NaN or infinite values")
                    break
                if rank is not None and "lora_A" in name and tensor.shape[0] != rank:
                    reasons.append(f"the tensor {name} has rank {tensor.shape[0]}, not r={rank}")
                    break
        return reasons
    except Exception as exc:  # a truncated or corrupt file
        return [f"{ADAPTER_WEIGHTS} is damaged or unreadable: {type(exc).__name__}: {exc}"]


@dataclass
class CanaryResult:
    ok: bool
    max_difference: float
    reason: str


def canary(
    client: InferenceClient,
    adapter: str,
    base: str,
    *,
    messages: Sequence[dict[str, Any]] = CANARY_MESSAGES,
    top: int = 5,
    tolerance: float = 1e-3,
) -> CanaryResult:
    """Prove the adapter is applied: its first-token logprobs must differ from the base's.

    An adapter whose modules did not attach (or whose B matrices are zero) gives exactly the
    base's distribution, and vLLM would serve it without complaint.
    """
    with_base = client.chat(messages, model=base, max_tokens=1, temperature=0, top_logprobs=top)
    with_adapter = client.chat(
        messages, model=adapter, max_tokens=1, temperature=0, top_logprobs=top
    )
    a = (with_base.logprobs or [{}])[0]
    b = (with_adapter.logprobs or [{}])[0]
    if not a or not b:
        return CanaryResult(False, 0.0, "the server returned no logprobs for the canary")
    shared = set(a) & set(b)
    diff = max((abs(a[t] - b[t]) for t in shared), default=0.0)
    if set(a) != set(b):
        diff = max(diff, math.inf)
    if diff > tolerance:
        return CanaryResult(True, diff, f"first-token logprobs differ by up to {diff:.4g}")
    return CanaryResult(
        False,
        diff,
        f"the adapter's first-token logprobs equal the base's (max difference {diff:.2g}): "
        "its weights are not applied (zero B matrices, or module names that do not match)",
    )


@dataclass
class DeployResult:
    """What happened. ``in_use`` is the adapter name the bot should now address."""

    ok: bool
    name: str
    reasons: list[str] = field(default_factory=list)
    lint: LintResult | None = None
    canary: CanaryResult | None = None
    in_use: str | None = None
    unloaded: list[str] = field(default_factory=list)


def deploy_adapter(
    client: InferenceClient,
    name: str,
    folder: Path,
    *,
    served_model_name: str,
    base_fingerprint: str | None,
    max_lora_rank: int,
    server_path: str | None = None,
    previous: str | None = None,
    unload_previous: bool = False,
    model_type: str = "llama",
    checksum: str | None = None,
) -> DeployResult:
    """Lint, load under ``name`` (never reused), check ``/v1/models``, canary.

    On any failure the new adapter is unloaded again and ``previous`` stays in use.
    ``server_path`` is where the server sees ``folder`` (a shared volume), default ``folder``.
    """
    result = DeployResult(ok=False, name=name, in_use=previous)
    lint = lint_adapter(
        folder,
        served_model_name=served_model_name,
        base_fingerprint=base_fingerprint,
        max_lora_rank=max_lora_rank,
        model_type=model_type,
        checksum=checksum,
    )
    result.lint = lint
    if not lint.ok:
        result.reasons = [f"lint: {r}" for r in lint.reasons]
        return result
    if name == served_model_name or not NAME_RE.match(name):
        result.reasons = [
            f"the adapter name {name!r} is not a versioned name like <dataset>-v<N> "
            "(dataset: a lower-case letter, then up to 31 of a-z, 0-9, _)"
        ]
        return result
    try:
        if any(m.id == name for m in client.models()):
            result.reasons = [
                f"an adapter named {name!r} is already loaded; adapter names are never reused"
            ]
            return result
        client.load_adapter(name, server_path or str(folder))
        listed = {m.id: m for m in client.models()}
        if name not in listed or listed[name].parent not in (None, served_model_name):
            result.reasons = [f"the server does not list {name!r} under {served_model_name!r}"]
            _quiet_unload(client, name)
            return result
        check = canary(client, name, served_model_name)
        result.canary = check
        if not check.ok:
            result.reasons = [f"canary: {check.reason}"]
            _quiet_unload(client, name)
            return result
    except (InferenceError, InferenceUnavailable) as exc:
        result.reasons = [f"server: {exc}"]
        _quiet_unload(client, name)
        return result
    result.ok = True
    result.in_use = name
    if previous and unload_previous and previous != name:
        _quiet_unload(client, previous)
        result.unloaded.append(previous)
    return result


@dataclass
class RollbackResult:
    ok: bool
    in_use: str | None
    reasons: list[str] = field(default_factory=list)


def rollback(
    client: InferenceClient,
    *,
    current: str,
    previous: str | None,
    previous_path: str | None = None,
) -> RollbackResult:
    """Make ``previous`` the adapter in use again (reloading it from ``previous_path`` if the
    server no longer has it) and unload ``current``. ``previous=None`` rolls back to the base."""
    try:
        loaded = {m.id for m in client.models()}
        if previous and previous not in loaded:
            if not previous_path:
                return RollbackResult(
                    False, current, [f"{previous!r} is not loaded and no path was given"]
                )
            client.load_adapter(previous, previous_path)
        if current in loaded:
            client.unload_adapter(current)
    except (InferenceError, InferenceUnavailable) as exc:
        return RollbackResult(False, current, [f"server: {exc}"])
    return RollbackResult(True, previous)


def _quiet_unload(client: InferenceClient, name: str) -> None:
    try:
        if any(m.id == name for m in client.models()):
            client.unload_adapter(name)
    except (InferenceError, InferenceUnavailable):
        pass
