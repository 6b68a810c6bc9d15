"""Run untrusted code (train.py, the model server that loads its checkpoint) under bubblewrap.

Untrusted means train.py, anything it imports from the experiment's files, and anything
it starts. This module only builds the command line; the runner starts and watches the
process exactly as it would without a sandbox.

How the engine uses it
----------------------

The caller names every path as it will be seen *inside* the sandbox, and asks the
``Jail`` for the strings to put into argv and env. With the sandbox on they are the
inside paths; with it off they are the host paths behind them. So the code that
builds argv is the same in both modes::

    from engine import sandbox

    sb = sandbox.detect(config.sandbox)     # once; "auto" | "bwrap" | "off"; raises SandboxError
    record.sandbox = sb.describe()          # "bwrap 0.8.0" or "off: bubblewrap not found"

    # training: the experiment's files read-only, the data cache read-only (with all
    # but manifest.json and train.bin hidden), one writable scratch dir, the validation
    # sources hidden (engine/warm.py does this)
    jail = sb.jail(sandbox.Mounts(
        ro={"/work": export_dir, "/data": cache},
        rw={"/scratch": scratch_dir},
        hide=sandbox.with_bytecode(validation_source_files) + [cache / "val.bin"],   # host paths
    ))
    env = minimal_env({
        "AUTORESEARCH_CHECKPOINT": jail.path("/scratch/model.pt"),
        "AUTORESEARCH_CACHE": jail.path("/data"),
        "HOME": jail.path("/scratch"), "TMPDIR": "/tmp",       # host values would not exist inside
    })
    launch = jail.launch([jail.python, jail.path("/work/train.py")], env=env, cwd="/work")
    result = run_process(launch.argv, cwd=Path(launch.cwd), env=launch.env, log_path=..., ...)
    returncode = launch.returncode(result.returncode)   # bwrap reports death by signal N as 128+N

    # model server: same recipe, nothing writable, only the checkpoint file from scratch
    jail = sb.jail(sandbox.Mounts(ro={"/work": export_dir, "/ckpt/model.pt": scratch_dir / "model.pt"},
                                  hide=sandbox.with_bytecode(validation_source_files)))
    server_env = minimal_env({"HOME": "/tmp", "TMPDIR": "/tmp"})
    launch = jail.launch([jail.python, jail.path("/work/prepare.py"), "serve",
                          "--train", jail.path("/work/train.py"),
                          "--checkpoint", jail.path("/ckpt/model.pt")], env=server_env, cwd="/work")
    proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdin=PIPE, stdout=PIPE,
                            start_new_session=True)   # pipes pass through bwrap unchanged

``jail.python`` is the running interpreter (``sys.executable``), at the path where it is
visible inside. Paths that are not under a caller's mount (``/tmp``, ``/usr/bin/env``)
pass through ``jail.path`` unchanged. With the sandbox off, ``hide`` cannot be enforced
and nothing is isolated: "off" is for a user who chose it, or a machine without bwrap.

Killing: the runner signals bwrap's process group. Processes inside are in a new
session (``--new-session``), so that signal reaches bwrap only; they die because
bwrap's own child is PID 1 of a new PID namespace, and the kernel kills every process
of a PID namespace when its PID 1 exits. That child exits when the command exits,
and ``--die-with-parent`` SIGKILLs it when bwrap dies (SIGTERM or SIGKILL alike). The
runner's hang detector still works: the processes inside are descendants of bwrap in
the host's process table. ``launch.cwd`` is the host directory behind the inside cwd,
so a leftover bwrap can be recognised by its working directory.

What the sandbox sees (and why)
-------------------------------

Namespaces and process flags:

- ``--unshare-user --disable-userns`` (when the probe shows they work; bwrap >= 0.8):
  an own user namespace empties the capability bounding set, and code inside cannot
  make further user namespaces (kernel attack surface). As root without them, the
  caps are still dropped and no_new_privs is set; ``describe()`` says "no userns".
- ``--unshare-pid``: sees only its own processes; everything dies with PID 1 (above);
  ``/proc/<engine pid>/environ`` does not exist in there.
- ``--unshare-net``: only a private loopback: no outbound connection, no DNS, no
  connection to servers on the host's 127.0.0.1, no abstract unix sockets of the host.
- ``--unshare-ipc``, ``--unshare-uts`` (with ``--hostname sandbox``),
  ``--unshare-cgroup-try``: no host SysV IPC, host name, or cgroup paths.
- ``--die-with-parent``: the sandbox is SIGKILLed when bwrap (or the engine) dies.
- ``--new-session``: no controlling terminal, so no TIOCSTI keystroke injection.
- ``--cap-drop ALL``: no capabilities, even when the engine runs as root.
- ``--clearenv`` then one ``--setenv`` per variable the caller gives: nothing of the
  engine's environment (API keys) leaks by default. bwrap sets ``PWD`` after
  ``--chdir``; the command is run through ``/usr/bin/env -u PWD`` (about a millisecond)
  so the environment is exactly the caller's.

Filesystem (a fresh tmpfs root, remounted read-only at the end; nothing of the host is
there unless listed here):

- ``--proc /proc``: a procfs of the new PID namespace (the engine is not in it).
  ``/proc/driver/nvidia`` is global kernel state and shows up there as it is.
- ``--dev /dev``: a minimal /dev (null, zero, full, random, urandom, tty, pts).
- GPUs: ``--dev-bind`` of every ``/dev/nvidia*`` (nvidiactl, nvidia-uvm,
  nvidia-uvm-tools, nvidia0..N, nvidia-modeset, the nvidia-caps dir for MIG),
  ``/dev/dri`` and ``/dev/kfd`` (AMD) when they exist. The driver's user-space libraries (libcuda) live
  under /usr (/usr/lib/x86_64-linux-gnu, /usr/lib64 or /usr/local/nvidia), found
  through /etc/ld.so.cache, so no extra bind is needed for them.
- ``/usr`` read-only; ``/bin /sbin /lib /lib32 /lib64 /libx32`` re-created as the same
  symlinks on merged-/usr systems, bound read-only otherwise.
- a short list of ``/etc`` files (``ETC_ENTRIES``): the dynamic loader's cache and
  config (ld.so.*), alternatives (/usr/bin/cc and friends link through it; torch.compile
  needs a C compiler), passwd/group/nsswitch.conf (getpass.getuser(), which torch's
  compile cache uses, fails without them), localtime/timezone, hosts/host.conf/gai.conf
  (resolving "localhost"), os-release/lsb-release (platform queries), protocols/services.
  Symlinks among them are re-created, not followed. No ssl, no machine-id, no
  ld.so.preload.
- ``/sys`` read-only, only devices, bus, class, dev, module: CPU topology (OpenMP and
  glibc read /sys/devices/system/cpu) and what the NVIDIA driver reads (PCI devices,
  the nvidia module's parameters). Left out: firmware (DMI tables with serial
  numbers), kernel, fs, power.
- the Python installation, read-only at the same paths: sys.prefix, sys.base_prefix,
  sys.exec_prefix, sys.base_exec_prefix, and each site-packages/dist-packages on
  sys.path outside them (a user site in $HOME counts; only that directory is bound).
  Never "/", $HOME or a directory above it, nor a repository root (a directory with
  .git). A venv that lies under a caller's mount point (``/work/main/.venv`` with
  ``/work`` mounted) or under ``/tmp`` (the private tmpfs below would hide it) is bound at
  ``/venv`` instead; ``jail.python`` follows it.
- private tmpfs at ``/tmp`` and ``/dev/shm`` (torch's DataLoader workers share memory
  there). No size limit: memory is the runner's concern.
- the caller's mounts: ``ro`` (``--ro-bind``) and ``rw`` (``--bind``), files or
  directories, parents before children. A ``.git`` in a bound directory is always
  hidden (no hook planting, no history of other experiments).
- ``hide``: host paths to make unreadable although they lie under a bound tree. A file
  gets /dev/null bound over it with ``--dev-bind`` (plain binds are nodev, where
  /dev/null could not even be opened): it reads as empty and swallows writes; one
  cheap bind each, fine for ~60 stdlib files. A directory gets an empty read-only tmpfs. Every inside location
  where the host path is visible is covered. ``with_bytecode()`` adds the
  ``__pycache__`` files of .py sources, which hold the same text.

Not bound: $HOME, /root, /home, /var, /run, /mnt, /srv, /opt, /media, the host's /tmp,
the repository (unless a caller mounts part of it). The interpreter inside is the
running one; a different Python for the target is not supported.

GPUs: checked on one NVIDIA H100 box (Firecracker VM, driver 580.159, torch 2.11+cu130,
the driver's libraries in /usr/local/nvidia/lib64 and /lib): inside this view
torch.cuda.is_available(), a bf16 matmul, causal scaled_dot_product_attention and
torch.compile (Triton: gcc, ldconfig, /tmp) all ran, with the runner's environment
and with a bare one (no LD_LIBRARY_PATH). Not checked: several GPUs, MIG,
/dev/dri and nvidia-modeset (absent there), AMD (/dev/kfd is bound when present),
a non-root engine on a GPU box. CI runs on CPU only.

Caller's duties (this module cannot see them):

- everything under a writable mount is untrusted afterwards: never follow symlinks
  there from the engine; a mount whose host path is itself a symlink is refused, so
  a checkpoint that train.py swapped for a link to a host file is not bound into
  the model server;
- use a fresh scratch dir per run, and keep secrets out of ``env``: bwrap's command
  line, which holds the ``--setenv`` values, is readable by other host processes;
- ``hide`` covers the host paths given, nothing else: another copy of the same text
  (a system Python's stdlib of the same version under /usr/lib/python3.X) stays
  readable unless it is listed too; and a hidden module that Python or torch
  imports breaks that import.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import signal
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .errors import UsageError
from .untrusted import one_line

MODES = ("auto", "bwrap", "off")

# Inside path of a venv that would otherwise be shadowed by a caller's mount point.
RELOCATED_VENV = "/venv"
# Private tmpfs mounted over these in every sandbox (after the Python installation).
PRIVATE_TMPFS = ("/tmp", "/dev/shm")

# Top-level directories whose contents running Python + torch needs.
SYSTEM_DIRS = ("/usr",)
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives",
    "passwd", "group", "nsswitch.conf",
    "localtime", "timezone",
    "hosts", "host.conf", "gai.conf",
    "os-release", "lsb-release",
    "protocols", "services",
)
SYS_ENTRIES = ("devices", "bus", "class", "dev", "module")
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")

# A caller may not mount over these: the sandbox's own system view lives there.
RESERVED = ("/proc", "/dev", "/sys", "/etc", "/usr") + SYSTEM_LINKS

PROBE_TIMEOUT = 30.0
ENV_BINARY = "/usr/bin/env"  # runs the command with PWD unset (bwrap sets it)


class SandboxError(UsageError):
    """The sandbox cannot be used as asked: one line for the user."""


# -- describing what goes in ------------------------------------------------------------


@dataclass(frozen=True)
class Mounts:
    """What the sandbox sees beyond the system view, named by inside paths.

    ``ro`` and ``rw`` map an inside path to a host file or directory. ``hide`` lists
    host paths that must not be readable inside even though a bound tree holds them.
    """

    ro: Mapping[str, str | os.PathLike] = field(default_factory=dict)
    rw: Mapping[str, str | os.PathLike] = field(default_factory=dict)
    hide: Sequence[str | os.PathLike] = ()

    def binds(self) -> list[tuple[str, str, bool]]:
        """(inside, host, writable), parents before children."""
        out = [(_norm_inside(k), os.fspath(v), False) for k, v in self.ro.items()]
        out += [(_norm_inside(k), os.fspath(v), True) for k, v in self.rw.items()]
        return sorted(out, key=lambda b: (b[0].count("/"), b[0]))

    def host_path(self, inside: str) -> str | None:
        """The host path behind an inside path, or None when no mount holds it."""
        inside = _norm_inside(inside)
        best: tuple[str, str] | None = None
        for point, host, _ in self.binds():
            if _is_under(inside, point) and (best is None or len(point) > len(best[0])):
                best = (point, host)
        if best is None:
            return None
        rel = os.path.relpath(inside, best[0])
        return best[1] if rel == "." else os.path.join(best[1], rel)


def with_bytecode(paths: Iterable[str | os.PathLike]) -> list[str]:
    """``paths`` plus the cached bytecode of each .py among them that exists.

    A .pyc holds a module's strings too, so hiding a source alone is not enough.
    """
    out: list[str] = []
    for p in map(os.fspath, paths):
        out.append(p)
        if p.endswith(".py"):
            for opt in ("", 1, 2):
                try:
                    cached = importlib.util.cache_from_source(p, optimization=opt)
                except (NotImplementedError, ValueError):
                    continue
                if os.path.exists(cached):
                    out.append(cached)
    return out


@dataclass(frozen=True)
class Launch:
    """What to hand to subprocess.Popen: ``Popen(l.argv, env=l.env, cwd=l.cwd, ...)``."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandboxed: bool

    def returncode(self, rc: int | None) -> int | None:
        """The command's status as subprocess reports it (negative: killed by that signal).

        bwrap exits with 128+N when the command died of signal N; a command that itself
        exits with such a status reads the same (the shell's convention).
        """
        if self.sandboxed and rc is not None and 128 < rc < 128 + signal.NSIG:
            return -(rc - 128)
        return rc


# -- the sandbox and its probe ----------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    """kind "bwrap" (with its version) or "none" (with the reason)."""

    kind: str
    version: str = ""
    reason: str = ""
    bwrap: str = ""
    userns: bool = False  # --unshare-user --disable-userns work here

    @property
    def enabled(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> str:
        """One line for records: "bwrap 0.8.0" or "off: bubblewrap not found"."""
        if self.enabled:
            return f"bwrap {self.version}" + ("" if self.userns else " (no userns)")
        return f"off: {self.reason}"

    def jail(self, mounts: Mounts | None = None) -> Jail:
        """Bind ``mounts`` to this sandbox: paths, interpreter and launch for one process."""
        return Jail(self, mounts or Mounts())


def detect(mode: str = "auto", *, bwrap: str | None = None) -> Sandbox:
    """The sandbox to use for ``mode`` ("auto", "bwrap" or "off").

    "auto": bwrap when it is on PATH and a real probe succeeds, else kind "none" with
    the reason. "bwrap": the same, but SandboxError when unavailable. "off": never
    probes. The probe runs once per process and bwrap binary.
    """
    if mode not in MODES:
        raise SandboxError(f'sandbox must be one of {", ".join(MODES)}, not "{mode}"')
    if mode == "off":
        return Sandbox("none", reason='sandbox = "off" in the configuration')
    path = bwrap or shutil.which("bwrap")
    result = (Sandbox("none", reason="bubblewrap not found (no bwrap on PATH)") if path is None
              else _probe(os.path.realpath(path)))
    if mode == "bwrap" and not result.enabled:
        raise SandboxError(f'sandbox = "bwrap" but {result.reason}: install the package `bubblewrap`'
                           " or set sandbox = \"off\"")
    return result


def clear_cache() -> None:
    """Forget probe results (tests)."""
    _probe.cache_clear()


@functools.lru_cache(maxsize=None)
def _probe(bwrap: str) -> Sandbox:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        version = out.stdout.strip().split()[-1] if out.returncode == 0 and out.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired) as e:
        return Sandbox("none", reason=f"bubblewrap at {bwrap} does not run ({one_line(str(e))})")
    try:
        roots = _python_roots({})
        system = _system_args() + _python_args(roots)
    except SandboxError as e:
        return Sandbox("none", reason=str(e))
    for point in PRIVATE_TMPFS:  # as every launch has them
        system += ["--tmpfs", point]
    command = ["--", _to_inside(sys.executable, roots) or sys.executable, "-I", "-S", "-c", ""]
    error = ""
    for userns in (True, False):
        argv = [bwrap, *_namespace_args(userns), *system, "--remount-ro", "/", *command]
        try:
            out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=PROBE_TIMEOUT, env={"PATH": os.defpath})
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
            continue
        if out.returncode == 0:
            return Sandbox("bwrap", version=version, bwrap=bwrap, userns=userns)
        error = out.stderr.strip() or f"exit status {out.returncode}"
    return Sandbox("none", reason=f"bubblewrap {version} cannot make a sandbox here ({one_line(error)})")


# -- one jail: mounts bound to a sandbox ------------------------------------------------


class Jail:
    """Mounts bound to a sandbox (or to none): paths, interpreter and launch for one process."""

    def __init__(self, sandbox: Sandbox, mounts: Mounts):
        self.sandbox = sandbox
        self.mounts = mounts
        self._binds = mounts.binds()
        _check_binds(self._binds)
        self._roots = _python_roots({b[0] for b in self._binds}) if sandbox.enabled else []
        if sandbox.enabled:
            _check_against_python(self._binds, self._roots)

    @property
    def python(self) -> str:
        """The interpreter for argv[0], as it is named where the command runs."""
        if not self.sandbox.enabled:
            return sys.executable
        return _to_inside(sys.executable, self._roots) or sys.executable

    def path(self, inside: str) -> str:
        """The string for argv or env that names ``inside`` where the command runs."""
        if self.sandbox.enabled:
            return _norm_inside(inside)
        return self.mounts.host_path(inside) or _norm_inside(inside)

    def launch(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str = "/") -> Launch:
        """The command line that runs ``argv`` with exactly ``env``, in ``cwd`` (inside path)."""
        argv = [os.fspath(a) for a in argv]
        env = {str(k): str(v) for k, v in env.items()}
        for key, value in env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SandboxError(f"environment variable name or value not allowed: {key!r}")
        host_cwd = self.mounts.host_path(cwd)
        if not self.sandbox.enabled:
            return Launch(argv, dict(env), host_cwd or _norm_inside(cwd), sandboxed=False)
        args = [self.sandbox.bwrap, *_namespace_args(self.sandbox.userns), "--clearenv"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += _system_args()
        args += _python_args(self._roots)
        for point in PRIVATE_TMPFS:
            args += ["--tmpfs", point]
        for inside, host, writable in self._binds:
            args += ["--bind" if writable else "--ro-bind", host, inside]
        args += _hide_args(self._hidden_paths(), self._visible_trees())
        args += ["--remount-ro", "/", "--chdir", _norm_inside(cwd), "--"]
        if os.path.exists(ENV_BINARY):  # bwrap sets PWD itself; restore the caller's
            args += [ENV_BINARY, "-u", "PWD", "--"] + ([f"PWD={env['PWD']}"] if "PWD" in env else [])
        return Launch(args + argv, {"PATH": os.defpath}, host_cwd or "/", sandboxed=True)

    def _visible_trees(self) -> list[tuple[str, str]]:
        """(inside, real host path) of every bound tree a hidden path could be under."""
        trees = [(d, os.path.realpath(d)) for d in SYSTEM_DIRS]
        trees += [(inside, os.path.realpath(host)) for host, inside in self._roots]
        trees += [(inside, os.path.realpath(host)) for inside, host, _ in self._binds]
        return trees

    def _hidden_paths(self) -> list[str]:
        hidden = [os.fspath(p) for p in self.mounts.hide]
        for _, host, _ in self._binds:  # never a repository's .git
            git = os.path.join(host, ".git")
            if os.path.lexists(git):
                hidden.append(git)
        return hidden


# -- argument builders --------------------------------------------------------------------


def _namespace_args(userns: bool) -> list[str]:
    args = ["--unshare-user", "--disable-userns"] if userns else []
    return args + [
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    ]


def _system_args() -> list[str]:
    args = ["--proc", "/proc", "--dev", "/dev"]
    for pattern in GPU_DEVICES:
        for dev in sorted(glob.glob(pattern)):
            args += ["--dev-bind", dev, dev]
    for d in SYSTEM_DIRS:
        args += ["--ro-bind", d, d]
    for d in SYSTEM_LINKS:
        args += _mirror(d)
    for name in ETC_ENTRIES:
        args += _mirror(os.path.join("/etc", name))
    for name in SYS_ENTRIES:
        args += ["--ro-bind-try", f"/sys/{name}", f"/sys/{name}"]
    return args


def _mirror(path: str) -> list[str]:
    """The same symlink inside, or a read-only bind; nothing when the host has neither."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.exists(path):
        return ["--ro-bind", path, path]
    return []


def _python_args(roots: list[tuple[str, str]]) -> list[str]:
    args: list[str] = []
    done: set[str] = set()
    for host, inside in roots:
        if inside not in done:
            done.add(inside)
            args += ["--ro-bind", host, inside]
    return args


def _hide_args(hidden: Iterable[str], trees: list[tuple[str, str]]) -> list[str]:
    args: list[str] = []
    done: set[str] = set()
    for path in hidden:
        if not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        is_dir = os.path.isdir(real)
        for inside, tree in trees:
            if not _is_under(real, tree):
                continue
            rel = os.path.relpath(real, tree)
            target = inside if rel == "." else os.path.join(inside, rel)
            if target in done:
                continue
            done.add(target)
            if is_dir:
                args += ["--tmpfs", target, "--remount-ro", target]
            else:
                args += ["--dev-bind", "/dev/null", target]
    return args


# -- the Python installation --------------------------------------------------------------


def _python_roots(mount_points: set[str]) -> list[tuple[str, str]]:
    """(host, inside) directories that make up the running Python, deduplicated.

    A venv under one of ``mount_points`` moves to RELOCATED_VENV; any other clash is
    an error.
    """
    venv = sys.prefix if sys.prefix != sys.base_prefix else None
    mount_points = set(mount_points) | set(PRIVATE_TMPFS)  # a venv in /tmp would be hidden by the tmpfs
    named = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    named += [p for p in sys.path if p and os.path.basename(p) in ("site-packages", "dist-packages")]
    candidates: list[str] = []
    for p in named:
        if not os.path.isdir(p):
            continue
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in candidates:
                candidates.append(q)
    candidates.sort(key=lambda p: (p.count("/"), p))
    home = os.path.realpath(os.path.expanduser("~"))
    roots: list[tuple[str, str]] = []
    for p in candidates:
        if any(_is_under(p, d) for d in SYSTEM_DIRS) or any(_is_under(p, r) for r, _ in roots):
            continue
        if p == "/" or _is_under(home, p) or os.path.exists(os.path.join(p, ".git")):
            raise SandboxError(f"the Python installation includes {p}, which is the root, $HOME "
                               "or a repository; use a venv or a Python installed elsewhere")
        roots.append((p, p))
    out = []
    for host, inside in roots:
        if any(_is_under(inside, m) for m in mount_points):
            if venv is None or os.path.realpath(host) != os.path.realpath(venv):
                raise SandboxError(f"the Python installation at {host} lies under the sandbox "
                                   "mount point; install Python elsewhere")
            inside = RELOCATED_VENV
        out.append((host, inside))
    return out


def _to_inside(path: str, roots: list[tuple[str, str]]) -> str | None:
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        for host, inside in roots:
            if _is_under(candidate, host):
                rel = os.path.relpath(candidate, host)
                return inside if rel == "." else os.path.join(inside, rel)
    return None


# -- checks --------------------------------------------------------------------------------


def _check_binds(binds: list[tuple[str, str, bool]]) -> None:
    seen: set[str] = set()
    for inside, host, _ in binds:
        if inside == "/" or any(_is_under(inside, r) for r in RESERVED):
            raise SandboxError(f"cannot mount over {inside} in the sandbox")
        if inside in seen:
            raise SandboxError(f"{inside} is mounted twice")
        seen.add(inside)
        if os.path.islink(host):  # a checkpoint swapped for a link to a host secret, say
            raise SandboxError(f"refusing to mount {host} at {inside}: it is a symbolic link")
        if not os.path.exists(host):
            raise SandboxError(f"cannot mount {host} at {inside}: it does not exist")
        for parent, parent_host, _ in binds:
            if parent != inside and _is_under(inside, parent):
                # bwrap cannot make a mount point inside a read-only bind
                probe = os.path.join(parent_host, os.path.relpath(inside, parent))
                if not os.path.exists(probe):
                    raise SandboxError(f"cannot mount at {inside}: {probe} does not exist")


def _check_against_python(binds: list[tuple[str, str, bool]], roots: list[tuple[str, str]]) -> None:
    for inside, _, _ in binds:
        for host, root_inside in roots:
            if inside != root_inside and _is_under(inside, root_inside):
                raise SandboxError(f"cannot mount at {inside}: it lies in the Python installation")
            if inside == RELOCATED_VENV and root_inside == RELOCATED_VENV:
                raise SandboxError(f"cannot mount at {inside}: the venv at {host} needs it")


# -- small helpers ----------------------------------------------------------------------------


def _norm_inside(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    if not os.path.isabs(p):
        raise SandboxError(f"sandbox paths must be absolute: {p}")
    return os.path.normpath(p).replace("//", "/")


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
