"""Keeps an agent command from outliving the engine.

The command agent does not start the user's command directly: it starts this script
(``python -I -S leash.py ENGINE_PID COMMAND``) as the leader of a new session and
process group, and the script runs ``/bin/sh -c COMMAND`` as its child in that group.

- ``PR_SET_PDEATHSIG`` asks the kernel to send the leash SIGHUP when the engine's thread
  that started it dies, for whatever reason (SIGKILL and out-of-memory kills included).
  The leash then SIGKILLs its whole process group, itself included, so no process of the
  agent is left to edit the worktree of a later run. The flag is not inherited by
  children, which is why a supervisor holds it rather than the command.
- SIGTERM and SIGINT sent to the group reach the command directly; the leash ignores
  them for itself and waits, so the command's own exit status comes back to the engine
  (a command ended by a signal makes the leash end by the same signal).

It imports nothing outside the standard library and runs in isolated mode, so it
starts quickly and is not affected by the user's PYTHON* variables.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
DEATH_SIGNAL = signal.SIGHUP


def _end_group(signum: int, frame: object) -> None:
    os.killpg(0, signal.SIGKILL)  # the whole group, this process included


def _keep_waiting(signum: int, frame: object) -> None:
    pass  # the signal reached the command too; its exit ends the leash


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: leash.py ENGINE_PID COMMAND\n")
        return 2
    engine_pid, command = int(argv[1]), argv[2]
    # Handlers, not SIG_IGN: handlers are reset to the default in the command at exec.
    signal.signal(DEATH_SIGNAL, _end_group)
    signal.signal(signal.SIGTERM, _keep_waiting)
    signal.signal(signal.SIGINT, _keep_waiting)
    _set_parent_death_signal()
    if os.getppid() != engine_pid:  # the engine died before the flag was set
        _end_group(DEATH_SIGNAL, None)
    pid = os.fork()
    if pid == 0:  # the command: default signal handling, same group, same stdio
        try:
            for sig in (DEATH_SIGNAL, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            os.execv("/bin/sh", ["/bin/sh", "-c", command])
        finally:
            os._exit(127)
    # Close our copies of stdio: only the command holds the pipes to the engine.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig  # pragma: no cover - a signal that does not end a process
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
