"""The engine's commands: run, prepare, status, ctl, history (called by autoresearch/cli.py).

Every check of the user's input happens before anything is written; a problem is a
UsageError (one line, exit status 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import gitops, rundir
from .config import load_config
from .control import ControlError, send_command
from .errors import UsageError
from .lock import holder_pid, is_locked
from .rundir import RunDir

REQUIRED_FILES = ("train.py", "prepare.py", "program.md")


# --- shared checks --------------------------------------------------------------------------


def resolve_repo(path: str | Path, require_files: bool = True) -> Path:
    """The repository's top level, after checking it can host a run."""
    repo = gitops.open_repo(Path(path).expanduser())
    root = Path(repo.working_tree_dir).resolve()
    if not require_files:
        return root
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise UsageError(f"{root} has no {', '.join(missing)}: an autoresearch repository needs "
                         f"{', '.join(REQUIRED_FILES)}")
    if not gitops.has_commits(repo):
        raise UsageError(f"{root} has no commits yet: commit {', '.join(REQUIRED_FILES)} first")
    uncommitted = [f for f in REQUIRED_FILES if not gitops.is_tracked_at_head(repo, f)]
    if uncommitted:
        raise UsageError(f"{', '.join(uncommitted)} not committed: a run starts from HEAD, so commit first")
    return root


def default_tag() -> str:
    """Today's date the way Karpathy tags runs: nov23, mar5."""
    t = time.localtime()
    return f"{time.strftime('%b', t).lower()}{t.tm_mday}"


def existing_tag(repo: Path, tag: str | None) -> str:
    """A tag that has a run directory: the one asked for, the running one, or the latest."""
    tags = rundir.list_tags(repo)
    if tag is not None:
        if tag not in tags:
            known = f" (runs here: {', '.join(tags)})" if tags else ""
            raise UsageError(f"unknown tag {tag!r} in {repo}{known}")
        return tag
    if not tags:
        raise UsageError(f"no runs in {repo} yet: start one with `autoresearch run --headless`")
    running = [t for t in tags if is_locked(RunDir.for_tag(repo, t).lock)]
    return (running or tags)[-1]


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except OSError:
        pass


# --- run ------------------------------------------------------------------------------------


def run_overrides(args: Any) -> dict[str, Any]:
    return {
        "agent.name": getattr(args, "agent", None),
        "loop.budget_seconds": getattr(args, "budget", None),
        "loop.max_experiments": getattr(args, "max_experiments", None),
        "agent.max_cost": getattr(args, "max_cost", None),
        "agent.model": getattr(args, "model", None),
        "agent.command": getattr(args, "agent_command", None),
        "loop.seed": getattr(args, "seed", None),
    }


def cmd_run(args: Any) -> int:
    from .agents import make_agent
    from .loop import Engine

    repo = resolve_repo(args.repo)
    config = load_config(repo, run_overrides(args))
    tag = gitops.check_tag(args.tag or default_tag())
    rd = RunDir.for_tag(repo, tag)
    if is_locked(rd.lock):
        pid = holder_pid(rd.lock)
        who = f" (pid {pid})" if pid else ""
        raise UsageError(f"an engine{who} is already running tag {tag!r}; "
                         f"watch it with `autoresearch status --tag {tag}` or pick another --tag")
    try:
        agent = make_agent(config)
    except (ImportError, ValueError) as e:
        raise UsageError(f"agent {config.agent.effective_name()!r} is not available: {e}") from None
    dirty = gitops.open_repo(repo).git.status("--porcelain", "--", *REQUIRED_FILES)
    if dirty:
        _say("note: uncommitted changes in your checkout are not part of the run (it starts from HEAD)")
    engine = Engine(repo, tag, config, agent, out=_say)
    engine.install_signal_handlers()
    if not getattr(args, "headless", False):
        _say(f"running headless; watch it with `autoresearch tui --tag {tag}`")
    return engine.run()


# --- prepare --------------------------------------------------------------------------------


def cmd_prepare(args: Any) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    if not (repo / "prepare.py").is_file():
        raise UsageError(f"{repo} has no prepare.py")
    argv = [sys.executable, "prepare.py"]
    if getattr(args, "source", None):
        source = Path(args.source).expanduser().resolve()
        if not source.exists():
            raise UsageError(f"--source {args.source}: no such file or directory")
        argv += ["--source", str(source)]
    if getattr(args, "force", False):
        argv.append("--force")
    try:
        return subprocess.call(argv, cwd=repo)  # output passes straight through
    except KeyboardInterrupt:
        return 130


# --- status ---------------------------------------------------------------------------------


def status_data(repo: Path, tag: str) -> dict[str, Any]:
    rd = RunDir.for_tag(repo, tag)
    state = rd.read_state()
    results = rd.read_results()
    alive = is_locked(rd.lock)
    config = state.get("config")
    if not config:
        try:
            config = load_config(repo).to_dict()
        except UsageError:
            config = None
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    return {
        "tag": tag,
        "run_dir": str(rd.root),
        "engine_alive": alive,
        "pid": holder_pid(rd.lock) if alive else None,
        "phase": state.get("phase") if alive else "stopped",
        "last_phase": state.get("phase"),
        "experiment": state.get("experiment") if alive else None,
        "phase_started_at": state.get("phase_started_at"),
        "paused": bool(state.get("paused")) if alive else False,
        "pause_requested": bool(state.get("pause_requested")) if alive else False,
        "hypothesis": state.get("hypothesis") if alive else None,
        "description": state.get("description") if alive else None,
        "best": state.get("best"),
        "baseline": state.get("baseline"),
        "experiments": len(results),
        "counts": counts,
        "agent": state.get("agent"),
        "cost_usd": state.get("cost_usd", 0.0),
        "error": state.get("error"),
        "heartbeat_at": state.get("heartbeat_at"),
        "budget": state.get("budget"),
        "config": config,
        "last_result": results[-1] if results else None,
    }


def cmd_status(args: Any) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    tag = existing_tag(repo, args.tag)
    data = status_data(repo, tag)
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return 0
    print(format_status(data))
    return 0


def format_status(d: dict[str, Any]) -> str:
    lines = []
    if d["engine_alive"]:
        since = ""
        if d.get("phase_started_at"):
            since = f" for {_ago(d['phase_started_at'])}"
        exp = f" #{d['experiment']:04d}" if isinstance(d.get("experiment"), int) else ""
        paused = " (pause requested)" if d.get("pause_requested") else ""
        lines.append(f"tag {d['tag']}: engine running (pid {d['pid']}), {d['phase']}{exp}{since}{paused}")
    else:
        seen = f", last heartbeat {_ago(d['heartbeat_at'])} ago" if d.get("heartbeat_at") else ""
        lines.append(f"tag {d['tag']}: engine not running{seen}")
    agent = d.get("agent") or {}
    name = agent.get("name") or (d.get("config") or {}).get("agent", {}).get("name", "?")
    model = f" ({agent['model']})" if agent.get("model") else ""
    budget = f", budget {d['budget']:g} s" if isinstance(d.get("budget"), (int, float)) else ""
    lines.append(f"agent {name}{model}{budget}, cost ${d.get('cost_usd') or 0:.2f}")
    if d.get("description") and d["engine_alive"]:
        lines.append(f"now: {d['description']}")
    best, base = d.get("best"), d.get("baseline")
    if best:
        commit = (best.get("commit") or "")[:7]
        lines.append(f"best: #{best['n']:04d} val_bpb {best['metric']:.6f} ({commit})")
    if base:
        lines.append(f"baseline: val_bpb {base['metric']:.6f} ± {base['noise']:.6f} over {base['runs']} run(s)")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(d["counts"].items()))
    lines.append(f"experiments: {d['experiments']}" + (f" ({counts})" if counts else ""))
    if d.get("error"):
        lines.append(f"error: {d['error']}")
    return "\n".join(lines)


def _ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h"


# --- history --------------------------------------------------------------------------------


def cmd_history(args: Any) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    tag = existing_tag(repo, args.tag)
    results = RunDir.for_tag(repo, tag).read_results()
    if getattr(args, "json", False):
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    if not results:
        print(f"tag {tag}: no experiments yet")
        return 0
    print(f"{'#':>4}  {'status':<11} {'val_bpb':>9} {'delta':>10}  {'commit':<7}  description")
    for r in results:
        metric = f"{r['metric']:.6f}" if isinstance(r.get("metric"), (int, float)) else "-"
        delta = f"{r['delta']:+.6f}" if isinstance(r.get("delta"), (int, float)) else ""
        commit = (r.get("commit") or "")[:7]
        forced = " (forced)" if r.get("forced") else ""
        print(f"{r.get('n', 0):>4}  {r.get('status', '?'):<11} {metric:>9} {delta:>10}  {commit:<7}  "
              f"{r.get('description', '')}{forced}")
    return 0


# --- ctl ------------------------------------------------------------------------------------


def cmd_ctl(args: Any) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    tag = existing_tag(repo, args.tag)
    text = " ".join(args.text).strip() if getattr(args, "text", None) else None
    if args.action == "note" and not text:
        raise UsageError("ctl note needs the note's text: autoresearch ctl note 'try a smaller model'")
    if args.action != "note" and text:
        raise UsageError(f"ctl {args.action} takes no text")
    rd = RunDir.for_tag(repo, tag)
    if not is_locked(rd.lock):
        print(f"autoresearch: no engine is running tag {tag!r}", file=sys.stderr)
        return 2
    try:
        reply = send_command(rd.socket, args.action, text)
    except ControlError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return 2
    if reply.get("ok"):
        print(f"{args.action}: accepted" + (f": {reply['message']}" if reply.get("message") else ""))
        return 0
    print(f"{args.action}: refused: {reply.get('reason', 'no reason given')}")
    return 1
