"""The engine's Prometheus metrics, plus the plain counters tests and benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class EngineMetrics:
    """Prometheus metrics plus plain counters the tests and ``/metrics`` read."""

    registry: CollectorRegistry
    batch_size: Gauge
    batch_size_max: Gauge
    batch_hist: Histogram
    tokens: Counter
    requests: Counter
    prefix_hits: Counter
    max_batch_seen: int = 0
    prefix_tokens_reused: int = 0
    current_batch: int = 0

    def reset_peak(self) -> None:
        """Start a new measurement of the largest batch (benchmarks, tests)."""
        self.max_batch_seen = 0
        self.batch_size_max.set(0)


def make_metrics(registry: CollectorRegistry | None) -> EngineMetrics:
    reg = registry or CollectorRegistry()
    return EngineMetrics(
        registry=reg,
        batch_size=Gauge(
            "brandbot_engine_batch_size", "Sequences in the current step", registry=reg
        ),
        batch_size_max=Gauge(
            "brandbot_engine_batch_size_max", "Largest batch seen since start", registry=reg
        ),
        batch_hist=Histogram(
            "brandbot_engine_step_batch_size",
            "Sequences per decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=reg,
        ),
        tokens=Counter("brandbot_engine_generated_tokens", "Tokens generated", registry=reg),
        requests=Counter("brandbot_engine_requests", "Requests served", ["kind"], registry=reg),
        prefix_hits=Counter(
            "brandbot_engine_prefix_cache_tokens",
            "Prompt tokens whose KV cache was reused instead of computed",
            registry=reg,
        ),
    )
