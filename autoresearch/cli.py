"""``autoresearch``: parse the command line and hand off to the engine or the monitor.

Engine commands live in engine/commands.py; monitor commands in tui/launch.py. Both are
imported lazily so that ``autoresearch status`` never loads Textual and nothing here
loads torch.
"""

from __future__ import annotations

import argparse
import sys

from engine.errors import UsageError

CTL_COMMANDS = ("pause", "resume", "skip", "keep", "stop", "note")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="An autonomous research loop with a live terminal monitor. "
        "With no command: start a run (or attach to the running one) and open the monitor.",
    )
    parser.add_argument("--repo", default=".", help="the research repository (default: current directory)")
    parser.add_argument("--tag", help="run tag (default: the latest run, or today's date for a new one)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tui", help="attach the monitor to a run (running or finished)")
    _common(p)

    p = sub.add_parser("run", help="run the research loop (in the background, with the monitor, unless --headless)")
    _common(p)
    p.add_argument("--headless", action="store_true", help="no monitor: print one line per phase and result")
    p.add_argument("--agent", choices=["heuristic", "claude", "command"], help="who proposes changes")
    p.add_argument("--budget", type=float, metavar="S", help="training seconds per experiment")
    p.add_argument("--max-experiments", type=int, metavar="N", help="stop after N experiments")
    p.add_argument("--max-cost", type=float, metavar="USD", help="pause the loop when the agent has cost this much")
    p.add_argument("--model", help="the Claude model (for --agent claude)")
    p.add_argument("--agent-command", metavar="CMD", help="the agent CLI (for --agent command), prompt on stdin")
    p.add_argument("--seed", type=int, help="seed for the heuristic agent")

    p = sub.add_parser("prepare", help="build the data cache (offline by default)")
    _common(p)
    p.add_argument("--source", metavar="PATH", help="a text file or directory of text files to use instead")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache verifies")

    p = sub.add_parser("status", help="where the run stands")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable, with the configuration in force")

    p = sub.add_parser("ctl", help="send a command to the running engine")
    _common(p)
    p.add_argument("action", choices=CTL_COMMANDS)
    p.add_argument("text", nargs="*", help="the note's text (for note)")

    p = sub.add_parser("history", help="every experiment of a run")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("serve", help="the monitor in a browser (bound to 127.0.0.1)")
    _common(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback is exposed)")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    # Accept --repo/--tag after the subcommand too ("autoresearch status --tag nov23").
    p.add_argument("--repo", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--tag", default=argparse.SUPPRESS, help="run tag")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # "ctl note --tag T some words": words after an option still belong to the note.
        if args.command == "ctl" and not any(e.startswith("-") for e in extra):
            args.text = list(args.text) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return dispatch(args)
    except UsageError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command in (None, "tui", "serve") or (command == "run" and not args.headless):
        from tui import launch

        if command in (None, "run"):  # the engine in the background, the monitor in front
            return launch.cmd_default(args)
        if command == "tui":
            return launch.cmd_tui(args)
        return launch.cmd_serve(args)

    from engine import commands

    handler = {
        "run": commands.cmd_run,
        "prepare": commands.cmd_prepare,
        "status": commands.cmd_status,
        "ctl": commands.cmd_ctl,
        "history": commands.cmd_history,
    }[command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
