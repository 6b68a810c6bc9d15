"""One trial of a committed change: train it, then score it, untrusted code in the sandbox.

Training runs the commit's own files (exported from git: tracked files only, no .git,
nothing ignored) read-only at /work, with one writable scratch directory at /scratch for
the checkpoint and the data cache at /data, where only manifest.json and train.bin can
be read (engine/warm.py: the process is usually started, warm, while the experiment
before was scored). The engine times it from outside, from its release: wall time past
``budget + startup`` seconds ends it as ``timeout``, whatever train.py counts.

The scorer is the trusted copy of prepare.py (engine/startup.py installs it), run
outside the sandbox; it starts the model servers that run train.py's code through the
sandboxed command line it is given, and writes eval.json where no sandbox can write.
The engine reads the number from eval.json, never from what train.py printed.
Evaluation output is appended to run.log after ``EVAL_MARKER``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir, sandbox
from .decide import classify_failure, parse_float
from .integrity import Fingerprint, cache_dir, manifest_path, sha256_file
from .lanes import end_turn, take_turn
from .results import METRIC, is_number
from .runner import ProcessResult, minimal_env, spawn, supervise, terminate_group
from .session import Session
from .target import metric_from, run_evaluate
from .untrusted import one_line, strip_control
from .warm import take_slot, warm_next

EVAL_MARKER = "=== autoresearch: evaluation (python prepare.py evaluate) ==="
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SCORER_LEAD = 10.0  # seconds before a training's budget is up that its scorer and the next process start
STOP_SIGNAL_WAIT = 1.0


@dataclass
class Outcome:
    """One run of a commit: trained and scored, or how it failed."""

    status: str  # "ok" (scored) or the failure's status
    metric: float | None = None
    error: str | None = None
    train_seconds: float | None = None
    peak_mem_mb: float | None = None
    summary: dict[str, str] = field(default_factory=dict)
    log_tail: list[str] | None = None
    holdout: float | None = None  # holdout_bpb, when the run was scored on the holdout slice too
    span: list[float] | None = None  # [start, end] of its training process, unix seconds
    self_reported: bool = False  # the number is what the run printed (a [target] without evaluate)
    tokens_per_sec: float | None = None
    num_steps: int | None = None


def child_env(s: Session, extra: dict[str, str]) -> dict[str, str]:
    """The environment of every process the engine starts for untrusted code: no secrets."""
    return minimal_env({"AUTORESEARCH_CACHE": str(cache_dir()), "AUTORESEARCH_TIME_BUDGET": f"{s.budget:g}",
                        **s.lane.env, **extra})


class ScorerTampered(RuntimeError):
    """The trusted copy of prepare.py changed during the run."""


def eval_answer_limit(s: Session) -> float:
    """Seconds a model server may take for any one answer (loading the model included).

    The startup allowance, no more: a server that used minutes per answer could train
    further (it sees the training text) while it pretends to load."""
    return s.config.loop.effective_startup()


def eval_limit(s: Session) -> float:
    """Wall seconds for a whole evaluation: two model servers, a few answers each."""
    return min(s.timeout, 4 * eval_answer_limit(s) + 30.0)


def training_limit(s: Session) -> float:
    """Wall seconds a training process may take, measured by the engine."""
    return min(s.timeout, s.budget + s.config.loop.effective_startup())


# Other Python installations the sandbox's read-only /usr may hold: the same stdlib text.
OTHER_STDLIBS = ("/usr/lib/python3*", "/usr/lib64/python3*", "/usr/local/lib/python3*")


def hidden_paths() -> list[str]:
    """What no sandbox may read although it lies under a bound tree: the sources of the
    validation text (listed by prepare.py in the manifest), the same files in any other
    Python installation under /usr, and their bytecode."""
    data = rundir.read_json(manifest_path())
    hidden = data.get("hidden") if isinstance(data, dict) else None
    paths = [p for p in hidden if isinstance(p, str)] if isinstance(hidden, list) else []
    corpus = data.get("corpus") if isinstance(data, dict) else None
    source = corpus.get("source") if isinstance(corpus, dict) and corpus.get("kind") == "stdlib" else None
    if isinstance(source, str):
        rels = [os.path.relpath(p, source) for p in paths if p.startswith(source.rstrip("/") + "/")]
        for other in sorted({d for pattern in OTHER_STDLIBS for d in glob.glob(pattern)}):
            if os.path.realpath(other) != os.path.realpath(source):
                paths += [os.path.join(other, rel) for rel in rels if os.path.lexists(os.path.join(other, rel))]
    return sandbox.with_bytecode(paths)


def run_trial(s: Session, n: int, commit: str, exp_dir: Path, timings: dict[str, float], *,
              holdout: bool = False, run: int = 1) -> Outcome:
    """Train and score ``commit`` once. Run 2 and later are confirmation runs: their phase is
    "confirming", their output follows a marker in the same run.log, and their timings are
    added up. With ``holdout`` the scorer also scores the holdout slice. A worker on a Ray
    node (``--ray``) runs this same function there (engine/remote.py)."""
    if s.lane.remote is not None:
        return s.lane.remote.run_trial(s, n, commit, exp_dir, timings, holdout=holdout, run=run)
    if run > 1:
        with open(exp_dir / "run.log", "ab") as f:
            f.write(f"\n=== autoresearch: confirmation run {run} ===\n".encode())
    hide = hidden_paths()
    slot = take_slot(s, hide)
    scorer = Scorer(s, slot, exp_dir, hide, holdout) if s.config.target is None else None
    try:
        return _train_and_score(s, slot, scorer, commit, exp_dir, timings, run, hide)
    finally:
        if scorer is not None:
            scorer.cancel()
        slot.hand_over(exp_dir)
        shutil.rmtree(exp_dir / "src", ignore_errors=True)


class Scorer:
    """The trusted scorer of one run (the run directory's copy of prepare.py), outside the
    sandbox; the model servers it starts run train.py's code inside it.

    It is started ``SCORER_LEAD`` seconds (at most half the budget) before the training's
    budget is up, with --wait: the servers import torch while the last steps train, and it
    scores once told "go".
    """

    def __init__(self, s: Session, slot, exp_dir: Path, hide: list[str], holdout: bool):
        self.s = s
        self.check()
        jail = s.sandbox.jail(sandbox.Mounts(ro={"/work": slot.src, "/scratch": slot.scratch}, hide=hide))
        env = minimal_env({"AUTORESEARCH_CACHE": "/nonexistent", "HOME": "/tmp", "TMPDIR": "/tmp", **s.lane.env})
        server = jail.launch(
            [jail.python, "-I", "-B", jail.path("/work/prepare.py"), "serve-model",
             "--train", jail.path("/work/train.py"), "--checkpoint", jail.path("/scratch/checkpoint.pt")],
            env=env, cwd="/work")
        self.out = exp_dir / "eval.json"
        self.argv = [s.python, "-I", "-B", str(s.rd.scorer), "evaluate", "--train", str(slot.src / "train.py"),
                     "--checkpoint", str(slot.scratch / "checkpoint.pt"), "--out", str(self.out),
                     "--server-cmd", json.dumps(server.argv), "--wait", "--timeout", f"{eval_answer_limit(s):g}",
                     *(["--holdout"] if holdout else [])]
        self.cwd = exp_dir
        self.proc = None

    def check(self) -> None:
        """Anything outside the sandbox running as the user (a command agent, an unsandboxed
        run) could edit the trusted copy: it is checked before every use."""
        if sha256_file(self.s.rd.scorer) != self.s.fingerprint.prepare_sha256:
            raise ScorerTampered(f"the trusted scorer {self.s.rd.scorer} no longer matches prepare.py "
                                 "as the run started")

    def start(self) -> None:
        if self.proc is None:
            self.check()
            self.proc = spawn(self.argv, cwd=self.cwd, env=child_env(self.s, {}), stdin=subprocess.PIPE)

    def go(self):
        self.start()
        self.check()  # edited while the servers started? then no score comes from it
        self._say(b"go\n")
        return self.proc

    def cancel(self) -> None:
        """No score after all (the training failed, or it is over): it exits without one."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._say(b"no\n")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            terminate_group(self.proc, self.s.kill_grace)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _say(self, line: bytes) -> None:
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass


def _supervise(s: Session, proc, log: Path, limit: float, tick=None) -> ProcessResult:
    """Watch a started child under the run's limits. Its process group is in state.json
    while it runs, so a restarted engine can reap what a killed one left behind."""
    s.update_flight(train_pgid=proc.pid)
    result = supervise(proc, log_path=log, timeout=limit, hang_seconds=s.config.loop.hang_seconds,
                       tick=tick or s.tick, should_kill=s.should_kill, grace=s.kill_grace)
    s.update_flight(train_pgid=None)
    if result.reason == "exited" and result.killed_by_signal in STOP_SIGNALS:
        # A whole-job stop (systemd, SLURM, a kill of the process group) signals the child
        # and the engine at once, and the child may die first: give the engine's own
        # signal a moment to arrive before calling this a crash.
        s.stop_event.wait(STOP_SIGNAL_WAIT)
        if s.stopping:
            result.reason = "killed"
    return result


def _train_and_score(s: Session, slot, scorer: Scorer, commit: str, exp_dir: Path, timings: dict[str, float],
                     run: int, hide: list[str]) -> Outcome:
    log = exp_dir / "run.log"
    if not take_turn(s):  # [loop] overlap: the other lane on this device may be training
        slot.discard()
        return Outcome(s.killed_status(), error=s.killed_reason())
    try:
        s.set_phase("running" if run == 1 else "confirming")
        limit = training_limit(s)
        proc = slot.release(s, commit)
        started, released = time.time(), time.monotonic()
        # Never in the first half of a short budget: three imports of torch at the release
        # would slow train.py's own start-up and first step, which no budget counts.
        lead = min(SCORER_LEAD, s.budget / 2)

        def tick() -> None:
            s.tick()
            if time.monotonic() - released >= s.budget - lead:
                # Hide the start-up of what comes next behind the last steps (both calls
                # start once): the model servers' and the next training process's imports,
                # which would otherwise compete with the scoring for the cores.
                if scorer is not None:
                    scorer.start()
                warm_next(s, hide)

        trained = _supervise(s, proc, log, limit, tick)  # the budget's clock starts at the release
    finally:
        end_turn(s)  # scored, decided and proposed while the other lane trains
    span = [round(started, 3), round(time.time(), 3)]
    trained.returncode = slot.launch.returncode(trained.returncode)
    warm_next(s, hide)  # (if it ended before the lead) the next training process starts now
    timings["train"] = round(timings.get("train", 0.0) + trained.wall_seconds, 3)
    # train.py's output is untrusted text: what of it is kept in the journal is cleaned.
    summary = {strip_control(k)[:64]: strip_control(v)[:200] for k, v in list(trained.summary.items())[:50]}
    trained.tail = [strip_control(line)[:500] for line in trained.tail]
    steps = parse_float(summary.get("num_steps"))
    base = dict(train_seconds=parse_float(summary.get("training_seconds")),
                peak_mem_mb=parse_float(summary.get("peak_mem_mb")), summary=summary,
                tokens_per_sec=parse_float(summary.get("tokens_per_sec")),
                num_steps=int(steps) if steps is not None else None, span=span)
    failure = classify_failure(trained)
    if failure == "killed":
        return Outcome(s.killed_status(), error=s.killed_reason(), **base)
    if failure:
        return Outcome(failure, error=failure_message(s, failure, trained, limit), log_tail=trained.tail[-30:], **base)
    if scorer is None:
        return _target_metric(s, slot, trained, log, timings, run, base)
    ckpt = slot.scratch / "checkpoint.pt"
    if ckpt.is_symlink() or not ckpt.is_file():
        return Outcome("crash", error="train.py exited 0 but wrote no checkpoint file to $AUTORESEARCH_CHECKPOINT",
                       log_tail=trained.tail[-30:], **base)

    # Without a sandbox, training could have reached the evaluator or the data: check.
    tampered = s.fingerprint.problems(Fingerprint.of(s.rd.worktree))
    if tampered:
        if any("manifest" in w for w in tampered):
            s.pause_with_error("; ".join(tampered))
        return Outcome("rejected", error="; ".join(tampered), **base)

    if run == 1:
        s.set_phase("evaluating")
    with open(log, "ab") as f:
        f.write(f"\n{EVAL_MARKER}\n".encode())
    ev = _supervise(s, scorer.go(), log, eval_limit(s))
    failed = _evaluation_failed(s, ev, timings, eval_limit(s), base)
    if failed is not None:
        return failed
    data = rundir.read_json(scorer.out)
    value = data.get(METRIC) if isinstance(data, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_number(value):
        return Outcome("nan", error=f"{METRIC} is {value}", **base)
    if not is_number(value):
        return Outcome("crash", error=f"eval.json has no numeric {METRIC}", log_tail=ev.tail[-30:], **base)
    held = data.get("holdout_bpb")
    return Outcome("ok", metric=float(value), holdout=float(held) if is_number(held) else None, **base)


def _evaluation_failed(s: Session, ev: ProcessResult, timings: dict[str, float], limit: float,
                       base: dict) -> Outcome | None:
    """The scorer's (or a target's evaluate command's) process, accounted; the Outcome when
    it failed or was killed, else None. Its output is untrusted too: cleaned first."""
    ev.tail = [strip_control(line)[:500] for line in ev.tail]
    ev.fail_line = strip_control(ev.fail_line) if ev.fail_line else None
    timings["eval"] = round(timings.get("eval", 0.0) + ev.wall_seconds, 3)
    failure = classify_failure(ev)
    if failure == "killed":
        return Outcome(s.killed_status(), error=s.killed_reason(), **base)
    if failure:
        status = failure if failure in ("oom", "timeout", "hang") else "crash"
        why = ev.fail_line or failure_message(s, failure, ev, limit)
        return Outcome(status, error=f"evaluation failed: {why}", log_tail=ev.tail[-30:], **base)
    return None


def _target_metric(s: Session, slot, trained: ProcessResult, log: Path, timings: dict[str, float], run: int,
                   base: dict) -> Outcome:
    """A [target]'s metric: from its trusted evaluate command, or self-reported by the run."""
    t = s.config.target
    output = trained
    if t.evaluate:
        if run == 1:
            s.set_phase("evaluating")
        with open(log, "ab") as f:
            f.write(f"\n=== autoresearch: evaluation ({t.evaluate}) ===\n".encode())
        output = run_evaluate(s, slot.src, slot.scratch, slot.root / "eval-out", log, s.should_kill)
        failed = _evaluation_failed(s, output, timings, s.timeout, base)
        if failed is not None:
            return failed
    value = metric_from(t, output, slot.root / "eval-out" if t.evaluate else slot.scratch)
    if value is None:
        where = f"{t.metric_json} (key {t.metric})" if t.metric_json else (
            f"the output (regex {t.metric_regex})" if t.metric_regex else f"a `{t.metric}: value` line after ---")
        return Outcome("crash", error=f"no numeric {t.metric} in {where}", log_tail=output.tail[-30:], **base)
    return Outcome("ok", metric=value, self_reported=not t.evaluate, **base)


def failure_message(s: Session, status: str, run: ProcessResult, limit: float) -> str:
    if status == "timeout":
        return f"killed after {run.wall_seconds:.0f} s of wall time (limit {limit:g} s, measured by the engine)"
    if status == "hang":
        return f"no output and no CPU progress for {s.config.loop.hang_seconds:g} s"
    last = next((line.strip() for line in reversed(run.tail) if line.strip()), "")
    if status == "oom":
        if run.killed_by_signal == 9:
            return "killed by SIGKILL (out of memory?)"
        return one_line(last)[:300] or "out of memory"
    if status == "nan":
        return strip_control(run.fail_line or "")[:300] or one_line(last)[:300]
    code = f"killed by signal {run.killed_by_signal}" if run.killed_by_signal else f"exit status {run.returncode}"
    return f"{code}: {one_line(last)[:300]}" if last else code
