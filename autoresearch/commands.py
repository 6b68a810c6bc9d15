"""One function per `autoresearch` subcommand: check the input, act, print, return the exit status.

Every check of the user's input happens before anything is written; a problem is a
UsageError (one line, exit status 2). The monitor (Textual) is imported only by the
commands that open it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.control import ControlError, send_command
from engine.errors import UsageError
from engine.lock import holder_pid, is_locked
from engine.rundir import RunDir
from engine.runs import default_tag, find_repo_root, resolve_repo, resolve_tag, running_tag, status_data

from .options import run_overrides


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except OSError:
        pass


def _print_lines(lines) -> int:
    """Print line by line; a reader that goes away (`| head`) ends it quietly."""
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the closed pipe again at exit: point stdout at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# --- the monitor ----------------------------------------------------------------------------


def start_or_attach(args: argparse.Namespace, argv: list[str]) -> int:
    """Attach to the running engine (of the given tag, or the running one), or start one.

    Also serves `autoresearch run` without --headless: its options go to the new engine,
    which gets the user's own arguments.
    """
    from engine import launcher
    from tui.launch import run_monitor

    repo = find_repo_root(args.repo)
    tag = getattr(args, "tag", None) or running_tag(repo) or default_tag()
    run = RunDir.for_tag(repo, tag)
    if not holder_pid(run.lock):
        pid = launcher.start_and_wait(launcher.engine_argv(argv, tag, has_run=args.command == "run"), repo, tag)
        print(f"autoresearch: engine started for tag {tag} (pid {pid}); log in {run.root / 'engine.log'}")
    elif run_overrides(args):
        print(f"autoresearch: an engine is already running tag {tag}; attaching (its options stay as they were)")
    return run_monitor(run)


def tui(args: argparse.Namespace, argv: list[str]) -> int:
    """Attach to the named run, else to the running engine; with none running and several
    runs, ask which to open (a list); with one, open it."""
    from engine.rundir import list_tags
    from tui import launch

    repo = find_repo_root(args.repo)
    tag = getattr(args, "tag", None)
    if tag is None and running_tag(repo) is None and len(tags := list_tags(repo)) > 1:
        tag = launch.choose_run(repo, tags)
        if tag is None:
            return 0  # the user left the list
    return launch.run_monitor(RunDir.for_tag(repo, resolve_tag(repo, tag)))


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    from tui.launch import serve_monitor

    port = int(args.port)
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    repo = find_repo_root(args.repo)
    return serve_monitor(repo, resolve_tag(repo, getattr(args, "tag", None)), args.host or "127.0.0.1", port,
                         allow_remote=bool(getattr(args, "allow_remote", False)))


# --- run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.headless:
        return start_or_attach(args, argv)
    from engine import gitops
    from engine.agents import make_agent
    from engine.config import load_config
    from engine.loop import Engine

    root = resolve_repo(args.repo, require_files=False)
    config = load_config(root, run_overrides(args))
    repo = resolve_repo(args.repo, target=config.target is not None)
    tag = gitops.check_tag(getattr(args, "tag", None) or default_tag())
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
    dirty = gitops.open_repo(repo).git.status("--porcelain", "--", *config.loop.mutable, "program.md")
    if dirty:
        _say("note: uncommitted changes in your checkout are not part of the run (it starts from HEAD)")
    engine = Engine(repo, tag, config, agent, out=_say)
    engine.install_signal_handlers()
    return engine.run()


# --- prepare --------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, argv: list[str]) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    if not (repo / "prepare.py").is_file():
        raise UsageError(f"{repo} has no prepare.py")
    command = [sys.executable, "prepare.py"]
    if args.source:
        source = Path(args.source).expanduser().resolve()
        if not source.exists():
            raise UsageError(f"--source {args.source}: no such file or directory")
        command += ["--source", str(source)]
    if args.force:
        command.append("--force")
    try:
        return subprocess.call(command, cwd=repo)  # output passes straight through
    except KeyboardInterrupt:
        return 130


# --- status ---------------------------------------------------------------------------------


def status(args: argparse.Namespace, argv: list[str]) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    data = status_data(repo, resolve_tag(repo, getattr(args, "tag", None)))
    if args.json:
        return _print_lines([json.dumps(data, indent=2)])
    return _print_lines(format_status(data).splitlines())


def format_status(d: dict[str, Any]) -> str:
    lines = []
    if d["engine_alive"]:
        since = f" for {_ago(d['phase_started_at'])}" if d.get("phase_started_at") else ""
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
    if d.get("sandbox"):
        lines.append(f"sandbox: {d['sandbox']}")
    flights = [f for f in d.get("flights") or [] if isinstance(f, dict)] if d["engine_alive"] else []
    if len(flights) > 1:  # several workers: one line each
        for f in sorted(flights, key=lambda f: f.get("worker") or 0):
            n = f"#{f['experiment']:04d}" if isinstance(f.get("experiment"), int) else "#----"
            since = f" for {_ago(f['phase_started_at'])}" if f.get("phase_started_at") else ""
            node = f" on {f['node']}" if isinstance(f.get("node"), str) and f["node"] else ""  # --ray
            lines.append(f"worker {f.get('worker')}{node}: {n} {f.get('phase') or '?'}{since}  "
                         f"{f.get('description') or ''}".rstrip())
    elif d.get("description") and d["engine_alive"]:
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


def history(args: argparse.Namespace, argv: list[str]) -> int:
    if getattr(args, "from_tsv", None) is not None:
        return _history_from_tsv(args)
    repo = resolve_repo(args.repo, require_files=False)
    tag = resolve_tag(repo, getattr(args, "tag", None))
    return _print_history(RunDir.for_tag(repo, tag).read_results(), f"tag {tag}", args.json)


def _history_from_tsv(args: argparse.Namespace) -> int:
    """`history --from results.tsv`: a loop of Karpathy's, printed as one of ours."""
    from engine.watch import read_results_tsv

    if getattr(args, "tag", None):
        raise UsageError("--from reads a results.tsv; it takes no --tag")
    results, skipped = read_results_tsv(args.from_tsv)
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        print(f"autoresearch: skipped {len(skipped)} malformed line{'s' if len(skipped) != 1 else ''} "
              f"of {args.from_tsv} (line {shown})", file=sys.stderr)
    return _print_history(results, str(args.from_tsv), args.json)


def _print_history(results, label: str, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    if as_json:
        return _print_lines(json.dumps(r.to_dict(), ensure_ascii=False) for r in results)
    if not results:
        return _print_lines([f"{label}: no experiments yet"])

    def rows():
        yield f"{'#':>4}  {'status':<11} {'val_bpb':>9} {'delta':>10}  {'commit':<7}  description"
        for r in results:
            metric = f"{r.metric:.6f}" if r.scored else "-"
            delta = f"{r.delta:+.6f}" if r.delta is not None else ""
            forced = " (forced)" if r.forced else ""
            yield f"{r.n:>4}  {r.status:<11} {metric:>9} {delta:>10}  {(r.commit or '')[:7]:<7}  {r.description}{forced}"

    return _print_lines(rows())


# --- report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, argv: list[str]) -> int:
    from engine.report import build_report, write_report

    repo = resolve_repo(args.repo, require_files=False)
    rd = RunDir.for_tag(repo, resolve_tag(repo, getattr(args, "tag", None)))
    if args.out:
        md, svg = write_report(rd, Path(args.out).expanduser())
        _say(f"wrote {md}" + (f" and {svg}" if svg else ""))
        return 0
    return _print_lines(build_report(rd).splitlines())


# --- watch ----------------------------------------------------------------------------------


def watch(args: argparse.Namespace, argv: list[str]) -> int:
    """The monitor on a loop another program drives. Reads only: nothing is written there."""
    from engine.watch import RESULTS_TSV, TRAIN_SCRIPT, repo_root

    repo = repo_root(args.path if args.path is not None else args.repo)
    if not (repo / TRAIN_SCRIPT).is_file() and not (repo / RESULTS_TSV).is_file():
        raise UsageError(f"{repo} has neither {TRAIN_SCRIPT} nor {RESULTS_TSV}: "
                         "watch the repository where the loop runs")
    from tui.watch_app import run_watch

    return run_watch(repo)


# --- ctl ------------------------------------------------------------------------------------


def ctl(args: argparse.Namespace, argv: list[str]) -> int:
    repo = resolve_repo(args.repo, require_files=False)
    tag = resolve_tag(repo, getattr(args, "tag", None))
    text = " ".join(args.text).strip() if args.text else None
    if args.action == "note" and not text:
        raise UsageError("ctl note needs the note's text: autoresearch ctl note 'try a smaller model'")
    if args.action in ("skip", "keep") and text and not text.lstrip("#").isdigit():
        raise UsageError(f"ctl {args.action} takes an experiment number (with several workers): ctl {args.action} 12")
    if args.action not in ("note", "skip", "keep") and text:
        raise UsageError(f"ctl {args.action} takes no text")
    rd = RunDir.for_tag(repo, tag)
    if not is_locked(rd.lock):
        raise UsageError(f"no engine is running tag {tag!r}")
    try:
        reply = send_command(rd.socket, args.action, text)
    except ControlError as e:
        raise UsageError(str(e)) from None
    if reply.get("ok"):
        print(f"{args.action}: accepted" + (f": {reply['message']}" if reply.get("message") else ""))
        return 0
    print(f"{args.action}: refused: {reply.get('reason', 'no reason given')}")
    return 1
