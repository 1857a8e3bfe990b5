"""The batching of operations of one loop turn (flask_signal.brokers.redis.batch), alone."""

from __future__ import annotations

from typing import Any

import gevent
import pytest

from flask_signal.brokers import BrokerUnavailable, OutcomeUnknown
from flask_signal.brokers.redis import batch as batch_module
from flask_signal.brokers.redis.batch import Batcher


class Sender:
    """A ``send`` that records each batch and answers each item with its double."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        gevent.sleep(0.01)  # a round trip: others of a later turn start their own batch
        if self.fail is not None:
            raise self.fail
        return [item * 2 for item in items]


def run_all(batcher: Batcher[int, int], items: list[int]) -> list[gevent.Greenlet[Any, Any]]:
    jobs = [gevent.spawn(batcher.run, item) for item in items]
    gevent.joinall(jobs)
    return jobs


def test_a_lone_call_is_sent_alone() -> None:
    send = Sender()
    assert Batcher(send).run(21) == 42
    assert send.batches == [[21]]


def test_calls_of_one_turn_share_one_send_and_each_gets_its_own_result() -> None:
    send = Sender()
    batcher = Batcher(send)
    jobs = run_all(batcher, list(range(10)))
    assert [job.value for job in jobs] == [n * 2 for n in range(10)]
    assert send.batches == [list(range(10))]
    assert (batcher.batches, batcher.items) == (1, 10)


def test_calls_made_while_a_batch_is_out_go_in_the_next() -> None:
    send = Sender()
    batcher = Batcher(send)
    first = run_all(batcher, [1, 2])
    second = run_all(batcher, [3])
    assert [job.value for job in first + second] == [2, 4, 6]
    assert send.batches == [[1, 2], [3]]


def test_a_batch_holds_at_most_its_limit() -> None:
    send = Sender()
    jobs = run_all(Batcher(send, limit=3), list(range(7)))
    assert [job.value for job in jobs] == [n * 2 for n in range(7)]
    assert send.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_limit_of_one_sends_each_at_once() -> None:
    send = Sender()
    run_all(Batcher(send, limit=1), [1, 2, 3])
    assert send.batches == [[1], [2], [3]]


def test_a_failed_send_fails_every_call_of_the_batch() -> None:
    error = BrokerUnavailable("Redis unavailable")
    jobs = run_all(Batcher(Sender(fail=error)), [1, 2, 3])
    assert [job.exception for job in jobs] == [error] * 3


def test_a_leader_stopped_before_sending_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while it waits for the others of its turn, the first caller sends
    nothing, and every other caller of the batch hears that it was not applied."""
    real_sleep = gevent.sleep
    stops = [gevent.GreenletExit()]

    def sleep(seconds: float = 0) -> None:
        real_sleep(seconds)
        if stops:
            raise stops.pop()

    monkeypatch.setattr(batch_module.gevent, "sleep", sleep)
    send = Sender()
    jobs = run_all(Batcher(send), [1, 2, 3])
    assert send.batches == []
    assert isinstance(jobs[0].value, gevent.GreenletExit)  # how a killed greenlet ends
    for job in jobs[1:]:
        assert isinstance(job.exception, BrokerUnavailable)
        assert not isinstance(job.exception, OutcomeUnknown)


def test_a_leader_stopped_while_sending_leaves_the_outcome_unknown() -> None:
    send = Sender(fail=gevent.GreenletExit())
    jobs = run_all(Batcher(send), [1, 2, 3])
    assert send.batches == [[1, 2, 3]]
    for job in jobs[1:]:
        assert isinstance(job.exception, OutcomeUnknown)


def test_a_short_answer_is_an_unknown_outcome() -> None:
    def short(items: list[int]) -> list[int]:
        return items[:-1]

    jobs = run_all(Batcher(short), [1, 2])
    assert all(isinstance(job.exception, OutcomeUnknown) for job in jobs)
