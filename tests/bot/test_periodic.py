"""The background loop every chore of the bot runs on (``bot.periodic.Periodic``)."""

from __future__ import annotations

import logging
import threading

import pytest

from bot.periodic import Periodic

HOUR = 3600.0


def test_stop_during_a_long_interval_ends_the_loop_at_once() -> None:
    ran = threading.Event()
    periodic = Periodic("test-periodic", HOUR, ran.set, immediately=True)
    periodic.start()
    assert ran.wait(10), "the first round runs at start"
    periodic.stop()
    periodic.join(timeout=10)  # without a prompt stop the thread would wait out the hour
    assert not periodic.is_alive()


def test_not_immediately_waits_one_interval_before_the_first_round() -> None:
    calls: list[int] = []
    periodic = Periodic("test-periodic", HOUR, lambda: calls.append(1), immediately=False)
    periodic.start()
    periodic.stop()
    periodic.join(timeout=10)
    assert not periodic.is_alive()
    assert calls == []


def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    again = threading.Event()

    def action() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("the database is away")
        again.set()
        periodic.stop()

    periodic = Periodic("test-periodic", 0.0, action, immediately=True, failure="round broke")
    with caplog.at_level(logging.ERROR, logger="brandbot.periodic"):
        periodic.start()
        assert again.wait(10), "a round ran after the failing one"
        periodic.join(timeout=10)
    assert not periodic.is_alive()
    assert len(rounds) == 2
    (record,) = [r for r in caplog.records if r.name == "brandbot.periodic"]
    assert record.getMessage() == "round broke"
    assert record.exc_info is not None and "the database is away" in str(record.exc_info[1])


def test_the_action_can_stop_its_own_loop() -> None:
    rounds: list[int] = []

    def action() -> None:
        rounds.append(1)
        periodic.stop()

    periodic = Periodic("test-periodic", 0.0, action, immediately=True)
    periodic.start()
    periodic.join(timeout=10)
    assert not periodic.is_alive()
    assert rounds == [1]


def test_a_failure_goes_to_the_chores_own_logger(caplog: pytest.LogCaptureFixture) -> None:
    chore = logging.getLogger("brandbot.test-chore")

    def action() -> None:
        periodic.stop()
        raise ValueError("broken")

    periodic = Periodic("test-periodic", HOUR, action, immediately=True, logger=chore)
    with caplog.at_level(logging.ERROR, logger="brandbot.test-chore"):
        periodic.start()
        periodic.join(timeout=10)
    assert [r.getMessage() for r in caplog.records if r.name == "brandbot.test-chore"] == [
        "test-periodic: round failed; running again"
    ]
