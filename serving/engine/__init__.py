"""The local inference engine (torch, transformers, peft). Importing this package loads torch;
code that only needs the request and result types imports :mod:`serving.inference_types`."""

from serving.engine.local import LocalEngine, pick_device
from serving.engine.metrics import EngineMetrics
from serving.inference_types import (
    BASE,
    AdapterError,
    EngineBusy,
    EngineError,
    FinishReason,
    GenerationEvent,
    GenerationHandle,
    GenerationResult,
    PromptScores,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    TokenScore,
    UnknownModel,
    softmax,
)

__all__ = [
    "BASE",
    "AdapterError",
    "EngineBusy",
    "EngineError",
    "EngineMetrics",
    "FinishReason",
    "GenerationEvent",
    "GenerationHandle",
    "GenerationResult",
    "LocalEngine",
    "PromptScores",
    "PromptTooLong",
    "SamplingParams",
    "TokenLogprob",
    "TokenScore",
    "UnknownModel",
    "pick_device",
    "softmax",
]
