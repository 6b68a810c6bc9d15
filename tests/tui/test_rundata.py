"""The data layer (no Textual): tails, batches, the watcher thread and its back-pressure."""

from __future__ import annotations

import os
import threading
import time

import pytest

from engine.results import Baseline, Best, Result, State
from tui.model import RunView
from tui.rundata import Batch, FileTail, RunReader, RunWatcher, decode_log_lines


def test_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "f.log"
    tail = FileTail(path)
    assert tail.read() == b""  # missing file: nothing, no error
    path.write_bytes(b"one\ntw")
    assert tail.read() == b"one\n"
    assert tail.partial == b"tw"
    with open(path, "ab") as f:
        f.write(b"o\nthree\n")
    assert tail.read() == b"two\nthree\n"
    assert tail.read() == b""


def test_tail_restarts_after_truncation_or_replacement(tmp_path):
    path = tmp_path / "f.log"
    path.write_bytes(b"a\nb\nc\n")
    tail = FileTail(path)
    tail.read()
    path.write_bytes(b"x\n")  # truncated and rewritten
    assert tail.read() == b"x\n" and tail.reset
    tmp = tmp_path / "g.log"
    tmp.write_bytes(b"new file\n")
    os.replace(tmp, path)  # replaced: new inode
    assert tail.read() == b"new file\n" and tail.reset


def test_tail_skips_a_huge_backlog_to_its_end(tmp_path):
    path = tmp_path / "f.log"
    path.write_bytes(b"".join(b"line %06d\n" % i for i in range(100_000)))  # 1.2 MB
    tail = FileTail(path, backlog_bytes=64 * 1024)
    data = tail.read()
    assert len(data) <= 64 * 1024
    assert data.endswith(b"line 099999\n") and data.startswith(b"line ")  # whole lines only
    assert tail.skipped == path.stat().st_size - len(data)


def test_log_lines_are_made_printable():
    raw = b"\x1b[1;31merror\x1b[0m here\n0%\r40%\r100%\ntab\there\x00\n"
    assert decode_log_lines(raw) == ["error here", "100%", "tab\there"]
    assert decode_log_lines(b"bad \xff byte\n") == ["bad \ufffd byte"]


def test_reader_batches_follow_the_run(engine):
    reader = RunReader(engine.run)
    first = reader.collect()
    assert first.state.phase == "starting" and first.alive is True
    assert [e["type"] for e in first.events] == ["engine"]
    assert reader.collect().is_empty()  # nothing changed, nothing to say

    engine.begin(1, "d1", "h1")
    engine.log(1, "a", "b")
    batch = reader.collect()
    assert batch.log_reset and batch.log_n == 1 and batch.log_lines == ["a", "b"]
    assert "LEARNING_RATE" in batch.diff
    assert any(e["type"] == "proposal" for e in batch.events)

    engine.finish(1, "keep", 1.5, "d1")
    engine.begin(2, "d2", "h2")
    engine.log(2, "c")
    batch = reader.collect()
    assert [(r.n, r.status, r.metric) for r in batch.results] == [(1, "keep", 1.5)]
    assert batch.log_reset and batch.log_n == 2 and batch.log_lines == ["c"]

    engine.die()
    batch = reader.collect()
    assert batch.alive is False


def test_truncated_jsonl_line_waits_for_its_end(engine):
    reader = RunReader(engine.run)
    reader.collect()
    with open(engine.run.results_jsonl, "ab") as f:
        f.write(b'{"n": 1, "status": "keep", "met')  # a write in progress (or a power cut)
    assert reader.collect().results == []
    with open(engine.run.results_jsonl, "ab") as f:
        f.write(b'ric": 1.2}\n')
    assert reader.collect().results == [Result(n=1, status="keep", metric=1.2)]


def test_lines_that_are_not_records_are_skipped(engine):
    reader = RunReader(engine.run)
    reader.collect()
    with open(engine.run.results_jsonl, "ab") as f:
        f.write(b'{"n": 1, "status": "discard", "metric": 1.3, "future_field": [1]}\n'
                b'{"status": "keep"}\n[1, 2]\nnot json\n{"n": "2", "status": "keep"}\n'
                b'{"n": 3, "status": "crash", "metric": null}\n')
    results = reader.collect().results
    assert [(r.n, r.status) for r in results] == [(1, "discard"), (3, "crash")]
    assert results[0].extra == {"future_field": [1]} and not results[1].scored


@pytest.mark.parametrize("use_watchdog", [True, False], ids=["watchdog", "polling"])
def test_watcher_delivers_changes_and_waits_for_ack(engine, use_watchdog):
    engine.begin(1, "d", "h")
    got: list[Batch] = []
    arrived = threading.Event()

    def on_batch(batch: Batch) -> None:
        got.append(batch)
        arrived.set()

    watcher = RunWatcher(engine.run, on_batch, use_watchdog=use_watchdog)
    watcher.start()
    try:
        assert arrived.wait(5)
        view = RunView("test")
        view.apply(got[0])
        assert view.n == 1
        # Not acked yet: lines written now must not arrive as a second batch...
        arrived.clear()
        for i in range(50):
            engine.log(1, f"line {i}")
        assert not arrived.wait(0.3)
        assert len(got) == 1
        # ...and once acked they arrive, coalesced.
        lines: list[str] = []
        deadline = time.monotonic() + 5
        while len(lines) < 50 and time.monotonic() < deadline:
            arrived.clear()
            watcher.ack()
            if arrived.wait(1):
                lines += got[-1].log_lines
        assert lines == [f"line {i}" for i in range(50)]
        assert len(got) <= 4  # 50 writes, a handful of batches
        assert watcher.polling is (not use_watchdog)  # watchdog is up (it starts after the first batch)
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()


def test_view_counts_best_and_engine_state():
    view = RunView("t")
    batch = Batch(
        state=State(phase="running", experiment=3, heartbeat_at=1000.0,
                    counts={"keep": 2, "discard": 5, "crash": 1, "timeout": 1, "baseline": 1, "interrupted": 1}),
        results=[Result(n=0, status="baseline", metric=2.0, baseline=True, commit="c0"),
                 Result(n=1, status="keep", metric=1.9, commit="c1")],
        alive=True,
    )
    assert view.apply(batch) >= {"state", "results", "alive"}
    assert view.in_flight and view.n == 3
    # state.json's counts, grouped by the engine's rule: an interrupted run did not fail.
    assert view.counts() == {"keep": 2, "discard": 5, "failed": 2, "other": 2}
    assert view.best() == Best(1, 1.9, "c1")  # from the results when state.json has no best
    assert view.baseline() == Baseline(2.0, 0.0, 1)
    view.apply(Batch(state=State(phase="running", best=Best(7, 1.8, "c7"), baseline=Baseline(2.1, 0.01, 3))))
    assert view.best() == Best(7, 1.8, "c7") and view.baseline() == Baseline(2.1, 0.01, 3)  # the engine's word
    assert view.counts() == {"keep": 1, "discard": 0, "failed": 0, "other": 1}  # no counts there: the results'
    view.apply(Batch(state=State(phase="running", experiment=3, heartbeat_at=1000.0)))
    assert view.engine_state(now=1010.0) == "running"
    assert view.engine_state(now=1000.0 + 3600) == "stale"
    view.apply(Batch(alive=False))
    assert view.engine_state(now=1010.0) == "gone"
    view.apply(Batch(state=State(phase="stopped")))
    assert view.engine_state(now=1010.0) == "stopped"
