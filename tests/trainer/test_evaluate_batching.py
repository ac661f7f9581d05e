"""Held-out evaluation of several models at once: perplexity with one load of the weights,
each model's drafts in an engine batch of their own, caps at the dataset's length limit in
tokens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bot.testkit.models import build_tiny_adapter
from serving.client import LocalClient
from serving.engine import LocalEngine
from trainer.data import TrainExample
from trainer.evaluate import (
    BrandRules,
    Candidate,
    answer_nll,
    answer_nll_many,
    draft_token_cap,
    evaluate_drafts,
    limit_tokens,
)
from trainer.likelihood import eval_batches

EXAMPLES = [
    TrainExample("You write posts.", f"Announce tea number {i}", "Our tea lands." + " More" * i)
    for i in range(5)
]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("eval-adapters")
    return [
        build_tiny_adapter(tiny_model_dir, root / f"a{seed}", served_name="tiny", seed=seed)
        for seed in (1, 2)
    ]


def test_one_load_scores_each_model_as_a_load_of_its_own(
    tiny_model_dir: Path, adapters: list[Path]
) -> None:
    dirs: list[Path | None] = [None, adapters[0], adapters[1]]
    seconds: list[float] = []
    together = answer_nll_many(tiny_model_dir, EXAMPLES, dirs, seconds=seconds)
    alone = [answer_nll(tiny_model_dir, EXAMPLES, adapter_dir=d) for d in dirs]
    assert len(seconds) == 3
    for got, want in zip(together, alone, strict=True):
        assert [t for _, t in got] == [t for _, t in want]
        assert [n for n, _ in got] == pytest.approx([n for n, _ in want], rel=1e-5)
    assert together[0] != together[1] != together[2]  # the adapters were really switched


def test_eval_batches_keep_an_outlier_from_padding_every_row() -> None:
    lengths = [200, 205, 210, 208, 206, 204, 240]
    batches = eval_batches(lengths, shared=150, batch_tokens=2048)
    assert [b.rows for b in batches] == [(0, 5, 1, 4, 3, 2), (6,)]
    assert [b.width for b in batches] == [210, 240]
    cost = sum(150 + len(b.rows) * (b.width - 150) if len(b.rows) > 1 else b.width
               for b in batches)  # fmt: skip
    assert cost == 750 < 150 + 7 * (240 - 150)  # fewer tokens than one padded batch
    for b in eval_batches([100] * 40, shared=50, batch_tokens=600):
        assert 50 + len(b.rows) * 50 <= 600  # the budget holds
    assert [b.rows for b in eval_batches([160, 170], shared=150, batch_tokens=2048)] == [(0, 1)]
    assert eval_batches([], shared=0, batch_tokens=10) == []
    assert [b.rows for b in eval_batches([900], shared=0, batch_tokens=10)] == [(0,)]


def test_the_length_limit_in_tokens_follows_the_densest_reference() -> None:
    assert limit_tokens(100, [("a" * 40, 10), ("b" * 20, 10)]) == 51  # 0.5 tokens a char
    assert limit_tokens(None, [("a" * 40, 10)]) is None
    assert limit_tokens(100, []) is None
    assert draft_token_cap(10, 96, limit_tokens(280, [("x" * 200, 50)])) == 71


class WholeBatches:
    """Holds the engine's scheduler between two steps while it is idle and fewer than
    ``size`` requests wait, so requests sent together are admitted together however late their
    threads start (on a busy machine one could arrive after the others had finished)."""

    def __init__(self, engine: LocalEngine, size: int) -> None:
        self.engine, self.size = engine, size
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _gate(self) -> None:  # runs on the scheduler thread, before it admits requests
        deadline = time.monotonic() + 30
        while (
            not self.engine._active
            and self.engine._inbox.qsize() < self.size
            and not self.done.is_set()
            and time.monotonic() < deadline
        ):
            time.sleep(0.002)

    def _hold(self) -> None:
        while not self.done.is_set():
            self.engine.run(self._gate)

    def __enter__(self) -> WholeBatches:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def test_each_models_drafts_share_a_batch_and_equal_drafting_one_by_one(
    tiny_model_dir: Path, adapters: list[Path]
) -> None:
    rules = BrandRules(max_length=60)
    seen: dict[str, int] = {}
    with LocalEngine(tiny_model_dir, served_name="tiny", threads=1) as engine:
        client = LocalClient(engine)
        client.load_adapter("tea-v1", str(adapters[0]))
        engine.metrics.reset_peak()
        with WholeBatches(engine, len(EXAMPLES)):
            base, tuned = evaluate_drafts(
                EXAMPLES,
                [Candidate("base", None, None), Candidate("tea-v1", "tea-v1", adapters[0])],
                base_dir=tiny_model_dir, client=client, rules=rules, max_new_tokens=24,
                progress=lambda name, done, total: seen.__setitem__(name, done),
            )  # fmt: skip
        # each model's drafts batched, never mixed: the adapter's decode with merged weights
        assert engine.metrics.max_batch_seen == len(EXAMPLES)
        assert engine.check_model("tea-v1") in engine._merged
        refs = [(e.answer, t) for e, t in zip(EXAMPLES, base.tokens, strict=True)]
        caps = [draft_token_cap(t, 24, limit_tokens(60, refs)) for t in base.tokens]
        one_by_one = {
            model: [
                client.chat(e.messages(with_answer=False), model=model, max_tokens=c,
                            temperature=0.0).text.strip()
                for e, c in zip(EXAMPLES, caps, strict=True)
            ]
            for model in (None, "tea-v1")
        }  # fmt: skip
    assert seen == {"base": len(EXAMPLES), "tea-v1": len(EXAMPLES)}
    assert base.drafts == one_by_one[None]
    assert tuned.drafts == one_by_one["tea-v1"]
    assert base.drafts != tuned.drafts
    assert tuned.compliant == [len(d) <= 60 for d in tuned.drafts]
    assert base.seconds > 0 and tuned.seconds > 0
    assert base.nll != tuned.nll
