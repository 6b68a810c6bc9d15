"""Training processes started before they are needed (warm), so that the interpreter and
torch are loaded while the previous experiment still trains (its last seconds) and is
scored.

A slot is a fresh directory (``.autoresearch/<tag>/slots/<id>``) with an empty ``src``
(bound read-only at /work) and a ``scratch`` (bound writable at /scratch). Its process,
in the sandbox, imports torch and numpy and then waits on its stdin. To use it, the
engine exports the experiment's commit into ``src`` (the bind shows the files inside),
writes "go", and times it from that moment: the budget is counted from the release,
never from the start. Afterwards ``scratch`` becomes the experiment's scratch directory.

A warm process never sees another experiment's files: each slot is new and empty until
its own release. It runs nothing of the experiment's before the release either, so a
slot that is never used (a rejected change, a stop) is simply killed and removed.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from . import sandbox
from .integrity import cache_dir
from .runner import minimal_env, spawn, terminate_group
from .session import Session

# Runs inside the sandbox before the experiment exists: only the slow, known imports
# ([loop] warm_imports), then it waits for the release.
WARM_STUB = """\
import importlib, os, runpy, sys
for name in MODULES:
    importlib.import_module(name)
print(READY, flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
sys.argv = ["train.py"]
sys.path.insert(0, os.getcwd())  # /work in the sandbox: the experiment's files, as `python train.py` would
runpy.run_path(os.path.join(os.getcwd(), "train.py"), run_name="__main__")
"""
TRAINING_DATA = ("manifest.json", "train.bin")  # what training may read of the data cache
READY_LINE = b"[autoresearch] warm start: ready\n"
WARM_STUB = WARM_STUB.replace("READY", repr(READY_LINE.decode().strip()))


class Slot:
    """One training process in its own sandbox, started and waiting for an experiment."""

    def __init__(self, s: Session, hide: list[str]):
        self.root = s.rd.root / "slots" / uuid.uuid4().hex[:12]
        self.src, self.scratch = self.root / "src", self.root / "scratch"
        self.src.mkdir(parents=True)
        for sub in ("tmp", "home"):
            (self.scratch / sub).mkdir(parents=True)
        ro: dict[str, Path] = {"/work": self.src}
        hidden = list(hide)
        target = s.config.target
        if target is None:  # this workspace: training reads the data cache's training split
            cache = cache_dir()
            ro["/data"] = cache
            hidden += [str(p) for p in cache.iterdir() if p.name not in TRAINING_DATA]
        jail = s.sandbox.jail(sandbox.Mounts(ro=ro, rw={"/scratch": self.scratch}, hide=hidden))
        env = minimal_env({
            "AUTORESEARCH_TIME_BUDGET": f"{s.budget:g}",
            "AUTORESEARCH_SCRATCH": jail.path("/scratch"),
            "AUTORESEARCH_CHECKPOINT": jail.path("/scratch/checkpoint.pt"),
            "TMPDIR": jail.path("/scratch/tmp"),
            "HOME": jail.path("/scratch/home"),
            **({"AUTORESEARCH_CACHE": jail.path("/data")} if target is None else {}),
            **s.lane.env,  # this worker's GPU and share of the CPU threads
        })
        env["PATH"] = with_python_on_path(jail, env.get("PATH", ""))
        self.warm = starts_warm(s)
        if self.warm:
            stub = WARM_STUB.replace("MODULES", repr(list(s.config.loop.warm_imports)))
            argv = [jail.python, "-c", stub]
        else:
            argv = ["/bin/sh", "-c", target.run]
        self.launch = jail.launch(argv, env=env, cwd="/work")
        self.hide = hide
        self.kill_grace = s.kill_grace
        self.proc = self._spawn() if self.warm else None

    def _spawn(self) -> subprocess.Popen:
        return spawn(self.launch.argv, cwd=Path(self.launch.cwd), env=self.launch.env,
                     stdin=subprocess.PIPE if self.warm else subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def release(self, s: Session, commit: str) -> subprocess.Popen:
        """Put the commit's files in place, wait until the process has started (a cold slot
        is still importing torch: that is start-up, not training), and let it run them."""
        s.wt.export(commit, self.src)
        if not self.warm:
            self.proc = self._spawn()  # a command of the target's own: its clock starts now
            return self.proc
        self._wait_ready(s)
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:
            pass  # it died while waiting: the run reports how
        return self.proc

    def _wait_ready(self, s: Session) -> None:
        """Read the ready line (at most ``startup_seconds``; a stop or skip ends the wait)."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + s.config.loop.effective_startup()
        seen = b""
        while not seen.endswith(b"\n") and time.monotonic() < deadline and not s.should_kill():
            ready, _, _ = select.select([fd], [], [], 0.1)
            s.tick()
            if ready:
                chunk = os.read(fd, 1)
                if not chunk:
                    return  # it died while starting: the run reports how
                seen += chunk

    def hand_over(self, exp_dir: Path) -> tuple[Path, Path]:
        """After the run: its files and scratch become the experiment's (for the scorer);
        the slot is removed. Returns (src, scratch) in the experiment's directory."""
        src, scratch = exp_dir / "src", exp_dir / "scratch"
        for path in (src, scratch):
            shutil.rmtree(path, ignore_errors=True)
        for sub in ("tmp", "home"):
            shutil.rmtree(self.scratch / sub, ignore_errors=True)
        for mine, theirs in ((self.src, src), (self.scratch, scratch)):
            if mine.is_dir():
                os.replace(mine, theirs)
        shutil.rmtree(self.root, ignore_errors=True)
        return src, scratch

    def discard(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                terminate_group(self.proc, self.kill_grace)
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)


def with_python_on_path(jail: sandbox.Jail, path: str) -> str:
    """PATH for a command in the sandbox: the interpreter's own directory first (a venv is
    seen at another path inside, so the host's PATH entry for it would point nowhere)."""
    return os.pathsep.join([os.path.dirname(jail.python), *[p for p in path.split(os.pathsep) if p]])


def take_slot(s: Session, hide: list[str]) -> Slot:
    """The warm slot if there is a live one (made for the same budget), else a cold one."""
    slot, s.warm_slot = s.warm_slot, None
    if slot is not None and slot.alive:
        return slot
    if slot is not None:
        slot.discard()
    return Slot(s, hide)


def starts_warm(s: Session) -> bool:
    """`python train.py` can start warm (the stub runs it); a [target]'s own command cannot
    wait, and starts at its release."""
    target = s.config.target
    return target is None or target.run.split() == ["python", "train.py"]


def warm_next(s: Session, hide: list[str]) -> None:
    """Start the process for the next training now (if it is not started yet): in the last
    seconds of this one's training (engine/trial.py), or once it has ended if it ended early."""
    if s.warm_slot is None and not s.stopping and starts_warm(s):
        s.warm_slot = Slot(s, hide)


def discard_warm(s: Session) -> None:
    if s.warm_slot is not None:
        s.warm_slot.discard()
        s.warm_slot = None
