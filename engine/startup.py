"""Opening and closing a tag: lock, worktree, resume from the journal, data cache.

Opening rebuilds everything the loop needs from the run directory (results.jsonl is the
source of truth), records an experiment that a dead engine left half-done as
``interrupted``, reaps what that engine's training left running, puts the worktree at
the best commit and builds the data cache when it is missing. Closing leaves the
worktree at the best commit and the tag ready to be resumed.
"""

from __future__ import annotations

import os
import shutil
import time

from . import gitops, rundir
from .agents.command import reap_stale_group
from .control import ControlServer
from .errors import UsageError
from .lanes import open_lane_worktrees
from .integrity import Fingerprint, cache_dir, manifest_path
from .results import INTERRUPTIBLE_PHASES, Result, Standing, State
from .runner import kill_stale_group, run_process
from .notify import Notifier
from .preflight import data_stamp
from .session import Session
from .steering import on_command
from .untrusted import one_line


def open_tag(s: Session) -> ControlServer:
    """Take the tag's lock and resume it (or start it). Returns the running control server."""
    _make_private_run_dir(s)
    s.lock.acquire()
    s.notifier = Notifier(s.config.notify.effective_urls(), s.tag,
                          on_error=lambda message: s.journal.event("notify", message=message))
    repo = gitops.open_repo(s.repo_path)
    gitops.ensure_excluded(repo)
    resuming = s.rd.results_jsonl.exists() or s.rd.state_json.exists()
    s.results = s.journal.open()
    previous = s.journal.state
    s.main_wt = gitops.Worktree.open_or_create(repo, s.rd.worktree, s.tag)
    s.base_commit = s.main_wt.resolve(gitops.base_ref(s.tag)) or s.main_wt.head()
    for flight in [vars(previous), *previous.flights]:  # every worker's, before anything touches a worktree
        kill_stale_group(flight.get("train_pgid"), s.rd.root)
        reap_stale_group(flight.get("agent_pgid"), s.rd.root)

    _record_interrupted_from(s, previous)
    s.standing = Standing.of(s.results, s.base_commit)
    numbers = [r.n for r in s.results]
    if s.rd.experiments.is_dir():
        numbers += [int(p.name) for p in s.rd.experiments.iterdir() if p.name.isdigit()]
    s.next_n = max(numbers, default=0) + 1
    s.main_wt.reset_to(s.best_commit())
    open_lane_worktrees(s)
    _remove_leftovers(s)
    s.cost_usd = _cost_from_events(s)
    s.notes = list(previous.notes_pending)

    s.journal.state = State()
    _write_full_state(s)
    s.journal.event("engine", event="resume" if resuming else "start", pid=os.getpid())
    server = ControlServer(s.rd.socket, lambda request: on_command(s, request))
    server.start()
    verb = "resuming" if resuming else "starting"
    s.say(f"{verb} tag {s.tag}: branch {gitops.branch_name(s.tag)}, agent {s.agent_label()}, "
          f"budget {s.budget:g} s, next experiment #{s.next_n:04d}")
    s.say(f"run directory {s.rd.root}")
    if not s.sandbox.enabled:
        s.say(f"warning: UNSANDBOXED ({s.sandbox.reason}): train.py runs with your user's rights; "
              "install bubblewrap to confine it")
    if s.lock.took_over_pid:
        s.say(f"took over a stale lock left by pid {s.lock.took_over_pid}")

    if s.config.target is None:  # this workspace: its data cache and its trusted scorer
        _ensure_prepared(s)
    _check_fingerprint_on_start(s)
    if s.config.target is None:
        _install_scorer(s)
    s.data_stamp = data_stamp()
    s.streak_from = len(s.results)
    return server


def close_tag(s: Session, server: ControlServer | None) -> None:
    """Leave the tag resumable. Each step is best-effort: on a full disk or a broken
    repository the others still run, and the lock is always released."""
    if not s.lock.held:
        return  # never started (another engine holds the tag): touch nothing
    if server is not None:
        server.close()
    try:
        if s.base_commit and s.main_wt is not None:
            s.main_wt.reset_to(s.best_commit())
    except Exception as e:
        s.say(f"warning: could not reset the worktree to the best commit: {one_line(e, 300)}")
    if s.phase != "error":
        s.set_phase("stopped")
    s.journal.update_state(train_pgid=None, agent_pgid=None, notes_pending=list(s.notes))
    s.journal.event("engine", event="exit", pid=os.getpid())
    s.notifier.stopped(s.error if s.exit_code else s.stop_reason, error=bool(s.exit_code), best=s.standing.best)
    s.notifier.close(5.0)
    s.lock.release()


def _make_private_run_dir(s: Session) -> None:
    """The run directory holds logs that may show secrets: only its owner may read it.
    A directory that cannot be written is bad input (one line), found before anything else."""
    try:
        for path in (s.rd.root.parent, s.rd.root):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
        probe = s.rd.root / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write the run directory {s.rd.root}: {e.strerror or e}") from None


def _remove_leftovers(s: Session) -> None:
    """What engines killed mid-experiment leave behind: a half-written pipelined proposal,
    exported files, scratch directories (checkpoints) of every experiment but the best,
    and half-written temporary files."""
    if (s.rd.next_worktree / ".git").exists():
        gitops.Worktree(s.rd.next_worktree, s.tag).reset_to(s.best_commit())
    shutil.rmtree(s.rd.root / "slots", ignore_errors=True)  # warm training processes died with their engine
    best = s.standing.best.n if s.standing.best else None
    for exp in s.rd.experiments.iterdir() if s.rd.experiments.is_dir() else ():
        if not exp.name.isdigit():
            continue
        shutil.rmtree(exp / "src", ignore_errors=True)
        if int(exp.name) != best:
            shutil.rmtree(exp / "scratch", ignore_errors=True)
        for tmp in exp.glob(".eval.json.*"):
            tmp.unlink(missing_ok=True)
    for pattern in (".state.json.*", ".results.tsv.*", ".write-test.*"):
        for tmp in s.rd.root.glob(pattern):
            tmp.unlink(missing_ok=True)


def record_interrupted_flight(s: Session) -> None:
    """The engine is going down with the calling lane's experiment in flight: record it
    as interrupted."""
    f = s.flight
    if f is None or any(r.n == f.n for r in s.results) or f.phase not in INTERRUPTIBLE_PHASES:
        return
    st = s.lane.fields
    s.record(Result(
        n=f.n, status="interrupted", baseline=f.baseline, remeasure=f.remeasure, started_at=f.started_at,
        ended_at=time.time(), description=st.get("description") or "", hypothesis=st.get("hypothesis") or "",
        commit=st.get("commit"), parent=st.get("parent") or s.best_commit(),
        error="the engine was stopped during this experiment", budget=s.budget, runs=list(st.get("runs") or []),
        worker=s.lane.index if s.several else None,
    ))


def _record_interrupted_from(s: Session, previous: State) -> None:
    """A previous engine died mid-experiment: record what it had in flight as interrupted.

    Started means its directory exists (made when checking begins), whatever phase the
    dead engine last managed to write: a full disk can leave "error" there. With several
    workers, a number below one already recorded is recorded too (its agent was still
    proposing): the numbers stay contiguous.
    """
    flights = previous.flights or [{**vars(previous), "worker": None}]
    recorded = {r.n for r in s.results}
    found = []
    for f in flights:
        n = f.get("experiment")
        if isinstance(n, int) and n not in recorded and all(n != g.get("experiment") for g in found):
            found.append(f)
    top = max(recorded, default=0)
    started = [f for f in found if s.rd.experiment(f["experiment"]).is_dir()]
    top = max([top, *(f["experiment"] for f in started)])
    for f in sorted(found, key=lambda f: f["experiment"]):
        n = f["experiment"]
        if f not in started and n > top:
            continue  # never started and the last number: the next experiment takes it
        runs = f.get("runs") if isinstance(f.get("runs"), list) else []
        result = Result(
            n=n, status="interrupted", baseline=f.get("baseline_run") is True, started_at=_num(f.get("started_at")),
            ended_at=previous.heartbeat_at or time.time(), description=str(f.get("description") or ""),
            hypothesis=str(f.get("hypothesis") or ""), commit=_str(f.get("commit")), parent=_str(f.get("parent")),
            error="the engine stopped during this experiment", budget=previous.budget,
            runs=[float(x) for x in runs if isinstance(x, (int, float))],
            worker=f.get("worker") if isinstance(f.get("worker"), int) else None,
        )
        s.journal.append_result(result)
        s.results.append(result)
        s.journal.event("result", **result.short())


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _cost_from_events(s: Session) -> float:
    total = 0.0
    for e in rundir.read_jsonl(s.rd.events_jsonl):
        if e.get("type") == "usage":
            cost = (e.get("agent") or {}).get("cost_usd")
            if isinstance(cost, (int, float)):
                total += cost
    return round(total, 6)


def _write_full_state(s: Session) -> None:
    s.journal.update_state(
        tag=s.tag, pid=os.getpid(), phase="starting", phase_started_at=round(time.time(), 3),
        budget=s.budget, timeout=s.timeout, best=s.standing.best, baseline=s.standing.baseline,
        counts=dict(s.standing.counts), agent={"name": getattr(s.agent, "name", "?"),
                                               "model": getattr(s.agent, "model", None)},
        cost_usd=s.cost_usd, config=s.config.to_dict(), branch=gitops.branch_name(s.tag),
        worktree=str(s.rd.worktree), notes_pending=list(s.notes), sandbox=s.sandbox.describe(),
        noise=s.standing.noise(), runs=[], next_proposal=None, flights=[],
    )


def _ensure_prepared(s: Session) -> None:
    """Build the data cache first if it is missing (its output shown as it comes)."""
    if manifest_path().exists():
        return
    s.say(f"no data cache at {cache_dir()}: running python prepare.py first")
    from .trial import child_env  # the same minimal environment training gets

    result = run_process(
        [s.python, "prepare.py"],
        cwd=s.rd.worktree,
        env=child_env(s, {}),
        log_path=s.rd.root / "prepare.log",
        tick=s.tick,
        should_kill=s.stop_event.is_set,
        grace=s.kill_grace,
        echo=_echo if s._out is not None else None,
    )
    if s.stopping:
        return  # stopped while preparing: the loop will not start
    if result.returncode != 0 or not manifest_path().exists():
        raise RuntimeError(f"python prepare.py failed (exit {result.returncode}); see {s.rd.root / 'prepare.log'}")


def _check_fingerprint_on_start(s: Session) -> None:
    info = rundir.read_json(s.rd.run_info)
    now = Fingerprint.of(s.rd.worktree)
    if not info:
        info = {"tag": s.tag, "created_at": time.time(), "base_commit": s.base_commit,
                "budget": s.budget, **now.to_dict()}
        rundir.atomic_write_json(s.rd.run_info, info)
    s.fingerprint = Fingerprint(info.get("prepare_sha256"), info.get("manifest_sha256"))
    problems = s.fingerprint.problems(now)
    if problems:
        raise UsageError(f"cannot resume tag {s.tag}: {'; '.join(problems)}; start a new run with another --tag")
    if s.standing.baseline_budget not in (None, s.budget):
        s.say(f"note: the baseline was measured with a {s.standing.baseline_budget:g} s budget; now {s.budget:g} s: "
              "the best is measured again at the new budget before any change is compared with it")


def _install_scorer(s: Session) -> None:
    """The scorer runs from a copy of prepare.py that no experiment can reach or edit.

    Called right after the fingerprint check, so the worktree's prepare.py is the one
    the run started with (and no change can alter it: it is outside every scope).
    """
    data = (s.rd.worktree / "prepare.py").read_bytes()
    if s.rd.scorer.exists() and s.rd.scorer.read_bytes() == data:
        return
    s.rd.scorer.parent.mkdir(parents=True, exist_ok=True)
    tmp = s.rd.scorer.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(s.rd.scorer)


def _echo(data: bytes) -> None:
    try:
        os.write(1, data)
    except OSError:
        pass
