"""The engine's request queue is bounded: past ``max_waiting`` a generation is refused, and the
HTTP server answers 503 with Retry-After instead of letting the queue grow."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bot.testkit.servers import BackgroundServer
from serving.engine import EngineBusy, LocalEngine, SamplingParams
from serving.server import create_app
from tests.serving.conftest import SERVED

MESSAGES = [{"role": "user", "content": "Write a tagline"}]


def test_a_full_engine_queue_is_refused_and_answered_503(tiny_model_dir: Path) -> None:
    with LocalEngine(tiny_model_dir, served_name=SERVED, max_batch_size=1, max_waiting=2) as eng:
        ids = eng.chat_prompt(MESSAGES)
        params = SamplingParams(max_tokens=eng.max_model_len - len(ids) - 1, ignore_eos=True)
        with BackgroundServer(create_app(eng, api_key="k")) as url:
            handles = [eng.generate(ids, params)]
            next(handles[0].events(timeout=30))  # decoding: it fills the batch of one
            with pytest.raises(EngineBusy):
                for _ in range(10):
                    handles.append(eng.generate(ids, params))
            assert len(handles) == 3  # the one decoding and two waiting
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": SERVED, "messages": MESSAGES, "max_tokens": 4},
                headers={"Authorization": "Bearer k"},
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "60"
            assert "busy" in r.json()["error"]["message"]
            for handle in handles:
                handle.cancel()
