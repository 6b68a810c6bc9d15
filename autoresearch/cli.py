"""``autoresearch``: the one command-line layer.

Parsing happens here, once; each subcommand is a function in autoresearch/commands.py.
The options of a run are one table (``RUN_OPTIONS``) that builds both the parser and
the configuration overrides, which then pass the same checks as autoresearch.toml.
Nothing here imports Textual or torch: the monitor is loaded only when it opens.
"""

from __future__ import annotations

import argparse
import sys
from engine.control import COMMANDS
from engine.errors import UsageError

from .options import RUN_OPTIONS

CTL_ACTIONS = tuple(c for c in COMMANDS if c != "ping")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="An autonomous research loop with a live terminal monitor. "
        "With no command: start a run (or attach to the running one) and open the monitor.",
    )
    parser.add_argument("--repo", default=".", help="the research repository (default: current directory)")
    parser.add_argument("--tag", help="run tag (default: the running run, else the latest; today's date for a new one)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tui", help="attach the monitor to a run (running or finished)")
    _common(p)

    p = sub.add_parser("run", help="run the research loop (in the background, with the monitor, unless --headless)")
    _common(p)
    p.add_argument("--headless", action="store_true", help="no monitor: print one line per phase and result")
    p.add_argument("--agent", choices=["heuristic", "claude", "command"], help="who proposes changes")
    for flag, _key, type_, metavar, help_ in RUN_OPTIONS:
        if type_ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(flag, type=type_, metavar=metavar, help=help_)

    p = sub.add_parser("prepare", help="build the data cache (offline by default)")
    _common(p)
    p.add_argument("--source", metavar="PATH", help="a text file or directory of text files to use instead")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache verifies")

    p = sub.add_parser("status", help="where the run stands")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable, with the configuration in force")

    p = sub.add_parser("ctl", help="send a command to the running engine")
    _common(p)
    p.add_argument("action", choices=CTL_ACTIONS)
    p.add_argument("text", nargs="*", help="the note's text (for note); the experiment's number (for skip and "
                                          "keep, when several workers run)")

    p = sub.add_parser("history", help="every experiment of a run")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--from", dest="from_tsv", metavar="RESULTS_TSV",
                   help="read a results.tsv in Karpathy's format (commit, val_bpb, memory_gb, status, description) "
                        "instead of a run of ours")

    p = sub.add_parser("watch", help="monitor a loop another program drives (Karpathy's autoresearch "
                                     "run by Claude Code or Codex); writes nothing")
    p.add_argument("path", nargs="?", metavar="PATH", help="its repository (default: the current directory)")

    p = sub.add_parser("report", help="the run as Markdown: best against baseline, kept changes, failures, cost")
    _common(p)
    p.add_argument("--out", metavar="FILE", help="write the Markdown to FILE and the chart next to it (.svg)")

    p = sub.add_parser("serve", help="the monitor in a browser (bound to 127.0.0.1)")
    _common(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="serve on a non-loopback --host (token-protected, plain HTTP)")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    # Accept --repo/--tag after the subcommand too ("autoresearch status --tag nov23").
    p.add_argument("--repo", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--tag", default=argparse.SUPPRESS, help="run tag")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # "ctl note --tag T some words": words after an option still belong to the note.
        if args.command == "ctl" and not any(e.startswith("-") for e in extra):
            args.text = list(args.text) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from autoresearch import commands

    handler = {
        None: commands.start_or_attach,
        "tui": commands.tui,
        "serve": commands.serve,
        "run": commands.run,
        "prepare": commands.prepare,
        "status": commands.status,
        "ctl": commands.ctl,
        "history": commands.history,
        "report": commands.report,
        "watch": commands.watch,
    }[args.command]
    try:
        return handler(args, argv)
    except UsageError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
