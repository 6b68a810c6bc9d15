"""Another repository's experiment ([target] in autoresearch.toml): reading its metric,
its trusted evaluation command, and its guard.

- The metric is read from output: a ``name: value`` line after ``---`` (Karpathy's
  summary, the default), the last match of ``metric_regex`` (group 1), or the key
  ``metric`` of a JSON file ``metric_json`` the run writes in its scratch directory.
- Without ``evaluate`` the number is what the run itself printed: the record says so
  (``self_reported``) and every screen labels it.
- ``evaluate`` is the user's trusted command: it runs outside the sandbox, in the
  experiment's files, with AUTORESEARCH_SCRATCH pointing at the run's outputs and
  AUTORESEARCH_OUT at a fresh directory for its own metric_json; its output is read the
  same way. It must not run the mutable files' code.
- ``guard`` must pass (exit status 0) before a change can be kept: it runs in the
  sandbox (it usually runs the code under test), in the experiment's files, read-only.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

from . import sandbox
from .config import TargetConfig
from .decide import parse_float
from .runner import ProcessResult, minimal_env, run_process
from .session import Session
from .untrusted import strip_control
from .warm import with_python_on_path


def metric_from(target: TargetConfig, output: ProcessResult, folder: Path) -> float | None:
    """The target's metric from a process's output, or from its JSON file in ``folder`` (the
    run's scratch directory, or the evaluate command's own output directory), or None."""
    if target.metric_json is not None:
        path = folder / target.metric_json
        if path.is_symlink() or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8")[:1_000_000])
        except (OSError, ValueError):
            return None
        value = data.get(target.metric) if isinstance(data, dict) else None
    elif target.metric_regex is not None:
        pattern = re.compile(target.metric_regex)
        found = [m.group(1) for line in output.tail for m in [pattern.search(line)] if m]
        value = parse_float(found[-1]) if found else None
    else:
        value = parse_float(output.summary.get(target.metric))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def run_evaluate(s: Session, src: Path, scratch: Path, out: Path, log: Path, should_kill) -> ProcessResult:
    """The target's trusted evaluation command, outside the sandbox. It reads the run's
    outputs in AUTORESEARCH_SCRATCH and writes any metric_json file in AUTORESEARCH_OUT
    (a new directory the run never had access to)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = minimal_env({"AUTORESEARCH_SCRATCH": str(scratch), "AUTORESEARCH_SRC": str(src),
                       "AUTORESEARCH_OUT": str(out), "AUTORESEARCH_METRIC": s.config.target.metric, **s.lane.env})
    return run_process(["/bin/sh", "-c", s.config.target.evaluate], cwd=src, env=env, log_path=log,
                       timeout=s.timeout, hang_seconds=s.config.loop.hang_seconds, tick=s.tick,
                       should_kill=should_kill, grace=s.kill_grace)


def run_guard(s: Session, commit: str, log: Path) -> str | None:
    """Run the guard on ``commit`` in the sandbox. None when it passes, else why not."""
    guard = s.config.target.guard if s.config.target else None
    if not guard:
        return None
    with tempfile.TemporaryDirectory(prefix="guard-", dir=s.rd.root) as tmp:
        src = Path(tmp) / "src"
        s.wt.export(commit, src)
        jail = s.sandbox.jail(sandbox.Mounts(ro={"/work": src}))
        env = minimal_env({"HOME": "/tmp", "TMPDIR": "/tmp", **s.lane.env})
        env["PATH"] = with_python_on_path(jail, env.get("PATH", ""))
        launch = jail.launch(["/bin/sh", "-c", guard], env=env, cwd="/work")
        with open(log, "ab") as f:
            f.write(f"\n=== autoresearch: guard ({guard}) ===\n".encode())
        s.set_phase("guarding")
        result = run_process(launch.argv, cwd=Path(launch.cwd), env=launch.env, log_path=log,
                             timeout=s.config.target.guard_timeout, tick=s.tick, should_kill=s.should_kill,
                             grace=s.kill_grace)
        shutil.rmtree(src, ignore_errors=True)
    code = launch.returncode(result.returncode)
    if result.reason == "exited" and code == 0:
        return None
    why = "timed out" if result.reason == "timeout" else (
        "was stopped" if result.reason == "killed" else f"exit status {code}")
    last = next((strip_control(line).strip() for line in reversed(result.tail) if line.strip()), "")
    return f"the guard `{guard}` failed ({why})" + (f": {last[:200]}" if last else "")
