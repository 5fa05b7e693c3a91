"""Checkpoints: the agent is held only while the snapshot is taken; the write and the
acks follow in the background, and a failed snapshot loses no record.

No broker: the state topic records what it was sent, and the snapshots it got are
restored the way a new owner of the partition restores them.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agents.app import Context
from agents.checkpointing import Checkpointer
from pipeline.checkpoint import decode_snapshot
from pipeline.config import load_settings
from pipeline.forking import fork_available


class Model:
    """A model whose snapshot takes ``delay`` seconds to build, or fails."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.delay = 0.0
        self.broken = False

    def state_dict(self) -> dict[str, Any]:
        time.sleep(self.delay)
        if self.broken:
            raise RuntimeError("model broke")
        return {"items": list(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = list(state["items"])


class StateTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> Any:
        self.sent.append(kwargs)

        async def delivered() -> None:
            return None

        return delivered()


class Stream:
    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    async def ack(self, event: Any) -> None:
        self.acked.append((event.message.partition, event.message.offset))


def _event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))


async def _nothing() -> None:
    return None


MODES = [
    pytest.param(True, id="fork", marks=pytest.mark.skipif(not fork_available(), reason="fork")),
    pytest.param(False, id="inline"),
]


def _checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool) -> Any:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # Faust's data directory
    context = Context(load_settings(checkpoint_fork=fork, checkpoint_s=3600.0))
    context.topics.state = StateTopic()  # type: ignore[assignment]
    context.flush = _nothing
    checkpointer: Checkpointer[Model] = Checkpointer(context, "engine", "sequence", Model)
    checkpointer.stream = Stream()  # type: ignore[assignment]

    async def no_snapshots(stages: tuple[str, ...], partition: int) -> dict[str, bytes | None]:
        return {stage: None for stage in stages}

    checkpointer.load_blobs = no_snapshots
    return checkpointer


async def _learn(checkpointer: Checkpointer[Model], partition: int, offset: int) -> None:
    model = await checkpointer.model(partition)
    model.items.append(f"p{partition}@{offset}")
    checkpointer.processed(_event(partition, offset))


async def _checkpoint(checkpointer: Checkpointer[Model]) -> None:
    """What an agent does when a checkpoint is due: take it under the models' lock."""
    async with checkpointer.lock:
        await checkpointer.checkpoint()


def _snapshots(checkpointer: Checkpointer[Model]) -> dict[int, Any]:
    sent = checkpointer.context.topics.state.sent  # type: ignore[attr-defined]
    return {item["partition"]: decode_snapshot(item["value"]) for item in sent}


@pytest.mark.parametrize("fork", MODES)
async def test_a_snapshot_holds_the_models_as_they_were_when_it_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, fork)
    for offset in range(3):
        await _learn(checkpointer, 0, offset)
    await _learn(checkpointer, 1, 10)
    checkpointer.models[0].delay = 0.5
    await _checkpoint(checkpointer)
    assert checkpointer.mode == ("fork" if fork else "inline")
    # Learnt after the snapshot was taken: in the models, not in the snapshot, not acked.
    await _learn(checkpointer, 0, 3)
    await checkpointer.settled()

    snapshots = _snapshots(checkpointer)
    assert snapshots[0] == {"offset": 2, "state": {"items": ["p0@0", "p0@1", "p0@2"]}}
    assert snapshots[1] == {"offset": 10, "state": {"items": ["p1@10"]}}
    assert checkpointer.stream.acked == [(0, 0), (0, 1), (0, 2), (1, 10)]
    assert checkpointer.describe()["pending_records"] == 1
    assert checkpointer.describe()["snapshots_written"] == 2

    restored = Checkpointer(checkpointer.context, "engine", "sequence", Model)

    async def the_snapshot(stages: tuple[str, ...], partition: int) -> dict[str, bytes | None]:
        sent = checkpointer.context.topics.state.sent
        return {"engine": next(s["value"] for s in sent if s["partition"] == partition)}

    restored.load_blobs = the_snapshot
    assert (await restored.model(0)).items == ["p0@0", "p0@1", "p0@2"]
    assert restored.covers(_event(0, 2))
    assert not restored.covers(_event(0, 3))


@pytest.mark.skipif(not fork_available(), reason="needs os.fork")
async def test_with_a_fork_the_agent_is_held_for_the_fork_not_the_encode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, True)
    await _learn(checkpointer, 0, 0)
    checkpointer.models[0].delay = 2.0
    checkpointer._last = time.monotonic() - 7200.0  # due
    assert checkpointer.due()
    await _checkpoint(checkpointer)
    assert checkpointer.pause_seconds < 1.0  # the 2 s encode runs in the child
    assert not checkpointer.due()  # one write at a time
    assert checkpointer.stream.acked == []
    await checkpointer.settled()
    assert checkpointer.stream.acked == [(0, 0)]
    assert checkpointer.describe()["last_checkpoint_s"] >= 2.0
    assert checkpointer.describe()["snapshot_mode"] == "fork"


@pytest.mark.parametrize("fork", MODES)
async def test_a_failed_snapshot_keeps_its_records_for_the_next_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, fork)
    await _learn(checkpointer, 0, 0)
    await _learn(checkpointer, 0, 1)
    checkpointer.models[0].broken = True
    await _checkpoint(checkpointer)
    await _learn(checkpointer, 0, 2)
    await checkpointer.settled()
    assert checkpointer.stream.acked == []
    assert _snapshots(checkpointer) == {}
    assert checkpointer.describe()["snapshot_failures"] == 1
    assert "model broke" in caplog.text

    checkpointer.models[0].broken = False
    await _checkpoint(checkpointer)
    await checkpointer.settled()
    assert checkpointer.stream.acked == [(0, 0), (0, 1), (0, 2)]
    assert _snapshots(checkpointer)[0]["state"]["items"] == ["p0@0", "p0@1", "p0@2"]


@pytest.mark.parametrize("fork", MODES)
async def test_a_record_whose_ack_fails_is_kept_and_checkpoints_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, fork)
    for offset in range(3):
        await _learn(checkpointer, 0, offset)
    stream = checkpointer.stream
    real_ack = stream.ack

    async def second_ack_fails(event: Any) -> None:
        if len(stream.acked) == 1:
            raise RuntimeError("consumer gone")
        await real_ack(event)

    stream.ack = second_ack_fails
    await _checkpoint(checkpointer)
    await checkpointer.settled()
    assert stream.acked == [(0, 0)]
    assert "could not be acked" in caplog.text
    assert checkpointer.describe()["pending_records"] == 2

    stream.ack = real_ack
    await _learn(checkpointer, 0, 3)
    checkpointer._last = time.monotonic() - 7200.0
    assert checkpointer.due()
    await _checkpoint(checkpointer)
    await checkpointer.settled()
    assert stream.acked == [(0, 0), (0, 1), (0, 2), (0, 3)]


async def test_a_fork_that_fails_falls_back_to_encoding_in_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, True)
    await _learn(checkpointer, 0, 0)

    def no_fork(produce: Any) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("agents.checkpointing.fork_child", no_fork)
    await _checkpoint(checkpointer)
    await checkpointer.settled()
    assert checkpointer.mode == "inline"
    assert "encoding in-line" in caplog.text
    assert _snapshots(checkpointer)[0]["state"]["items"] == ["p0@0"]
    assert checkpointer.stream.acked == [(0, 0)]


async def test_records_being_written_count_as_pending_until_acked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, True)
    await _learn(checkpointer, 0, 0)
    checkpointer.models[0].delay = 0.5
    await _checkpoint(checkpointer)
    await _learn(checkpointer, 0, 1)
    assert checkpointer.describe()["pending_records"] == 2
    await checkpointer.settled()
    assert checkpointer.describe()["pending_records"] == 1


async def test_at_shutdown_the_write_in_flight_ends_and_no_checkpoint_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, True)
    await _learn(checkpointer, 0, 0)
    checkpointer.models[0].delay = 0.3
    await _checkpoint(checkpointer)
    await checkpointer.context.app.on_before_shutdown.send()
    assert checkpointer.stream.acked == [(0, 0)]  # written before shutdown went on
    await _learn(checkpointer, 0, 1)
    checkpointer._last = time.monotonic() - 7200.0
    assert not checkpointer.due()
    await _checkpoint(checkpointer)  # a timer that fires late: nothing happens
    await checkpointer.settled()
    assert checkpointer.describe()["snapshots_written"] == 1
    assert checkpointer.stream.acked == [(0, 0)]


async def test_a_checkpoint_with_nothing_new_is_skipped_unless_models_change_on_timers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = _checkpointer(tmp_path, monkeypatch, True)
    await _learn(checkpointer, 0, 0)
    for _ in range(3):  # one with a record, then two with nothing new
        await _checkpoint(checkpointer)
        await checkpointer.settled()
    assert checkpointer.describe()["snapshots_written"] == 1
    assert checkpointer.describe()["checkpoints_skipped_idle"] == 2
    assert not checkpointer.due()  # a skip counts as a checkpoint for the interval

    timers: Checkpointer[Model] = Checkpointer(
        checkpointer.context, "stats", "stats", Model, skip_idle=False
    )
    timers.models[0] = Model()
    await _checkpoint(timers)
    await timers.settled()
    assert timers.describe()["snapshots_written"] == 1


async def test_the_setting_is_on_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().checkpoint_fork is True
    monkeypatch.setenv("CACHECAST_CHECKPOINT_FORK", "false")
    assert load_settings().checkpoint_fork is False
