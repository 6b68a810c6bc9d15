"""Notifications through real Apprise, to a JSON endpoint on 127.0.0.1 (``json://``).

Each event kind arrives with its text, events inside the rate window arrive as one
message, a dead or hung endpoint neither blocks nor raises (it becomes an ``on_error``
call), and $AUTORESEARCH_NOTIFY adds to the file's URLs. Waits have deadlines; nothing
is timed.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.config import ConfigError, load_config
from engine.notify import Notifier, redact_url
from engine.results import Best, Result

DEADLINE = 30.0  # seconds a wait may last before the test fails (never a measurement)


class Endpoint:
    """A tiny HTTP server that records what Apprise posts to it. With ``hang`` set, each
    request is held until ``release`` is set."""

    def __init__(self, hang: bool = False):
        self.posts: queue.Queue[dict] = queue.Queue()
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hang:
            self.release.set()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                endpoint.entered.set()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.release.wait(DEADLINE * 2)
                endpoint.posts.put({"path": self.path, **json.loads(body)})
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    pass  # Apprise gave up on a hung request

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "", query: str = "") -> str:
        return f"json://127.0.0.1:{self.port}/{path}" + (f"?{query}" if query else "")

    def next(self) -> dict:
        try:
            return self.posts.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError("no notification arrived") from None

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


@pytest.fixture
def hung():
    e = Endpoint(hang=True)
    yield e
    e.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keep(n=12, metric=2.081234, delta=-0.012345, description="lower the learning rate warm-up", **kw) -> Result:
    return Result(n=n, status="keep", metric=metric, delta=delta, commit="abc1234", description=description, **kw)


BEST_BEFORE = Best(7, 2.093579, "def5678")


def message(post: dict) -> tuple[str, list[str]]:
    return post["title"], post["message"].splitlines()


def test_each_event_kind_arrives_with_its_text(endpoint):
    errors: list[str] = []
    n = Notifier([endpoint.url()], "nov23", on_error=errors.append, window=0)
    try:
        n.result(keep(), BEST_BEFORE)
        title, lines = message(post := endpoint.next())
        assert title == "autoresearch nov23: new best val_bpb 2.081234 (#0012)"
        assert lines == ["-0.012345 against #0007 (2.093579)", "lower the learning rate warm-up"]
        assert post["type"] == "success"

        n.result(keep(n=13, metric=2.1, delta=0.02, forced=True, holdout=2.11), Best(12, 2.08, "abc1234"))
        title, lines = message(endpoint.next())
        assert title == "autoresearch nov23: new best val_bpb 2.100000 (#0013, kept by a person)"
        assert lines == ["+0.020000 against #0012 (2.080000)", "lower the learning rate warm-up", "holdout 2.110000"]

        # A baseline run, a discard and a crash are not news: the next message is the hang.
        n.result(Result(n=14, status="baseline", metric=2.09, baseline=True), BEST_BEFORE)
        n.result(Result(n=15, status="discard", metric=2.2, delta=0.1), BEST_BEFORE)
        n.result(Result(n=16, status="crash", error="Traceback"), BEST_BEFORE)
        n.result(Result(n=17, status="hang", error="no output and no CPU progress for 120 s\nkilled",
                        description="bigger batch"), BEST_BEFORE)
        title, lines = message(post := endpoint.next())
        assert title == "autoresearch nov23: #0017 killed as hang"
        assert lines == ["no output and no CPU progress for 120 s", "bigger batch"]
        assert post["type"] == "warning"

        n.result(Result(n=18, status="timeout", error="passed the hard limit of 210 s"), BEST_BEFORE)
        title, lines = message(endpoint.next())
        assert title == "autoresearch nov23: #0018 killed as timeout"
        assert lines == ["passed the hard limit of 210 s"]

        n.paused("cost cap reached: $5.00 of $5.00; resume to continue past it")
        title, lines = message(endpoint.next())
        assert title == "autoresearch nov23: paused"
        assert lines == ["cost cap reached: $5.00 of $5.00; resume to continue past it",
                         "resume: autoresearch ctl resume --tag nov23"]

        n.stopped("RuntimeError: the worktree is gone", error=True)
        title, lines = message(post := endpoint.next())
        assert title == "autoresearch nov23: engine stopped with an error"
        assert lines[0] == "RuntimeError: the worktree is gone"
        assert "this session: 7 experiments, 2 kept, 3 failed" in lines
        assert post["type"] == "failure"

        n.stopped("reached --max-experiments 7", error=False, best=Best(13, 2.1, "abc1234"))
        title, lines = message(endpoint.next())
        assert title == "autoresearch nov23: loop finished"
        assert lines == ["reached --max-experiments 7", "this session: 7 experiments, 2 kept, 3 failed",
                         "best: #0013 val_bpb 2.100000", "report: autoresearch report --tag nov23"]
    finally:
        assert n.close(DEADLINE)
    assert errors == []
    assert endpoint.posts.empty()


def test_agent_text_reaches_the_message_without_escape_sequences(endpoint):
    n = Notifier([endpoint.url()], "nov23", window=0)
    r = keep(description="\x1b[2J\x1b]0;pwned\x07faster\u202e attention\r\nsecond line " + "x" * 1000)
    n.result(r, BEST_BEFORE)
    _, lines = message(endpoint.next())
    assert n.close(DEADLINE)
    text = lines[1]
    assert text.startswith("faster attention second line xxx") and text.endswith("…")
    assert not any(ord(c) < 32 or c == "\u202e" for c in text) and len(text) <= 240


def test_events_inside_the_rate_window_arrive_as_one_message(endpoint):
    n = Notifier([endpoint.url()], "nov23", window=3600)
    n.result(keep(), BEST_BEFORE)
    first, _ = message(endpoint.next())  # the first event goes out at once
    assert first.endswith("new best val_bpb 2.081234 (#0012)")

    n.result(Result(n=13, status="timeout", error="passed the hard limit"), BEST_BEFORE)
    n.paused("5 failed experiments in a row (timeout)")
    n.stopped("stopped by a person", error=False)
    assert n.close(DEADLINE)  # the window is not over: closing sends what waits
    title, lines = message(post := endpoint.next())
    assert title == "autoresearch nov23: 3 events"
    assert lines[0] == "#0013 killed as timeout" and "  passed the hard limit" in lines
    assert "paused" in lines and "  5 failed experiments in a row (timeout)" in lines
    assert "loop finished" in lines and "  stopped by a person" in lines
    assert post["type"] == "warning"  # the most severe of the three
    assert endpoint.posts.empty()


def test_nothing_listening_is_an_on_error_call_not_an_exception(caplog, capfd):
    errors: queue.Queue[str] = queue.Queue()
    caplog.set_level(logging.DEBUG)
    n = Notifier([f"json://127.0.0.1:{free_port()}/"], "nov23", on_error=errors.put, window=0)
    n.result(keep(), BEST_BEFORE)
    n.paused("low disk")
    n.stopped(None, error=False)
    error = errors.get(timeout=DEADLINE)
    assert error.startswith("notification 1 of 1 (JSON) failed: ") and "\n" not in error
    assert n.close(DEADLINE)
    # Apprise's own logging reached neither the terminal nor the root logger.
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("apprise")]


def test_a_hung_endpoint_does_not_block_the_loop(hung):
    n = Notifier([hung.url(query="rto=60")], "nov23", window=0, max_queued=100)
    n.paused("first")
    assert hung.entered.wait(DEADLINE)  # the sender is now stuck in a request the server holds

    done = threading.Event()

    def loop_side():
        for i in range(300):
            n.result(Result(n=i, status="timeout", error="slow"), BEST_BEFORE)
        n.paused("then this")
        n.stopped("and this", error=True)
        done.set()

    threading.Thread(target=loop_side, daemon=True).start()
    assert done.wait(DEADLINE), "the loop-side calls blocked on a hung endpoint"
    assert hung.posts.empty()  # all of that while the first request was still held

    assert not n.close(0.2)  # close keeps its deadline even with a request hanging
    hung.release.set()
    assert hung.next()["title"] == "autoresearch nov23: paused"
    assert n.close(DEADLINE)  # the sender, closing, now sends the rest as one message
    title, lines = message(hung.next())
    assert title == "autoresearch nov23: 302 events"
    assert lines[-1] == "(202 earlier events not shown: the queue was full)"
    assert "engine stopped with an error" in lines


def test_a_hung_endpoint_that_times_out_is_an_on_error_call(hung):
    errors: queue.Queue[str] = queue.Queue()
    n = Notifier([hung.url(query="rto=1")], "nov23", on_error=errors.put, window=0)
    n.stopped("finished", error=False)
    assert "notification 1 of 1 (JSON) failed" in errors.get(timeout=DEADLINE)
    hung.release.set()
    assert n.close(DEADLINE)


def test_the_environment_adds_urls_to_the_files(endpoint, tmp_path: Path, monkeypatch):
    (tmp_path / "autoresearch.toml").write_text(f'[notify]\nurls = ["{endpoint.url("file")}"]\n')
    monkeypatch.setenv("AUTORESEARCH_NOTIFY", f"{endpoint.url('one')}, {endpoint.url('two')}  {endpoint.url('file')}")
    config = load_config(tmp_path)
    urls = config.notify.effective_urls()
    assert urls == [endpoint.url("file"), endpoint.url("one"), endpoint.url("two")]
    assert config.to_dict()["notify"]["urls"] == ["json://…"] * 3  # no URL (token) in state.json

    n = Notifier(urls, "nov23", window=0)
    n.paused("changed data")
    assert n.close(DEADLINE)
    paths = sorted(endpoint.next()["path"] for _ in range(3))
    assert paths == ["/file", "/one", "/two"]


def test_without_urls_nothing_starts_and_every_call_returns():
    n = Notifier([], "nov23")
    assert not n.enabled
    n.result(keep(), BEST_BEFORE)
    n.paused("x")
    n.stopped("y", error=True)
    assert n.close(0)
    assert not [t for t in threading.enumerate() if t.name == "autoresearch-notify" and t.is_alive()]


@pytest.mark.parametrize("toml, env, expect", [
    ('urls = "json://localhost/"', None, "[notify] urls must be a list of strings"),
    ('url = ["json://localhost/"]', None, "unknown key [notify] url"),
    ('urls = ["not a url"]', None, "[notify] urls: entry 1 is not a URL"),
    ('urls = ["nosuchservice://secret-token"]', None, "entry 1: nosuchservice://… is not a URL Apprise can use"),
    ("urls = []", "json://localhost/ mystery", "$AUTORESEARCH_NOTIFY: entry 2 is not a URL"),
])
def test_bad_notify_configuration_is_one_line(tmp_path: Path, monkeypatch, toml, env, expect):
    (tmp_path / "autoresearch.toml").write_text(f"[notify]\n{toml}\n")
    if env is None:
        monkeypatch.delenv("AUTORESEARCH_NOTIFY", raising=False)
    else:
        monkeypatch.setenv("AUTORESEARCH_NOTIFY", env)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert "secret-token" not in str(e.value)


def test_redact_url_shows_only_the_scheme():
    assert redact_url("tgram://123456:ABCDEF/987/") == "tgram://…"
    assert redact_url("garbage") == "(not a URL)"


def test_the_engine_notifies_a_new_best_and_the_end_of_the_loop(endpoint, tmp_path: Path):
    """Through the real engine: a kept change, then the loop finishing, reach the endpoint
    (batched into one message by the rate window) without slowing the loop."""
    from tests.engine.conftest import run_engine
    from tests.engine.genome import make_repo

    repo = make_repo(tmp_path / "repo")
    with open(repo / "autoresearch.toml", "a") as f:
        f.write(f'\n[notify]\nurls = ["{endpoint.url()}"]\n')
    run_engine(repo, [{"set": {"LR": 0.02}, "desc": "double the learning rate"}], loop__max_experiments=2,
               loop__baseline_runs=1)
    lines: list[str] = []
    while not any("max-experiments" in line for line in lines):
        title, body = message(endpoint.next())
        lines += [title, *body]
    text = "\n".join(lines)
    assert "double the learning rate" in text and "#0002" in text
    assert "reached --max-experiments 2" in text
