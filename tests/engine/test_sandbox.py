"""engine/sandbox.py against a real bubblewrap: what untrusted code can and cannot reach.

Every test starts real processes in a real sandbox; only the tests of "off" mode and of
detection run without bwrap. CI installs bubblewrap (.ci/run), so the skip below is
for a developer's machine that lacks it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from engine import sandbox
from engine.sandbox import Mounts, SandboxError

from ..gitrepo import committed_repo

BWRAP = sandbox.detect("auto")
needs_bwrap = pytest.mark.skipif(
    not BWRAP.enabled, reason=f"needs a working bubblewrap (apt-get install bubblewrap): {BWRAP.reason}")

# LC_ALL keeps Python from adding LC_CTYPE to its own environment (PEP 538 coercion).
ENV = {"LC_ALL": "C.UTF-8", "AUTORESEARCH_MARK": "given"}


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {name: tmp_path / name for name in ("src", "scratch", "home")}
    for p in d.values():
        p.mkdir()
    (d["src"] / "train.py").write_text("print('hello from train.py')\n")
    (d["home"] / "secret.txt").write_text("the user's secret\n")
    return d


def run_inside(jail: sandbox.Jail, code: str, *, env: dict[str, str] | None = None, cwd: str = "/work",
               timeout: float = 120) -> subprocess.CompletedProcess:
    launch = jail.launch([jail.python, "-c", textwrap.dedent(code)], env=env or ENV, cwd=cwd)
    return subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def inside_json(jail: sandbox.Jail, code: str, **kwargs) -> dict:
    done = run_inside(jail, code, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def standard_jail(dirs: dict[str, Path], **kwargs) -> sandbox.Jail:
    return BWRAP.jail(Mounts(ro={"/work": dirs["src"]}, rw={"/scratch": dirs["scratch"]}, **kwargs))


# -- it runs, with exactly what it was given ---------------------------------------------


@needs_bwrap
def test_python_and_torch_run_inside_with_exactly_the_given_env_and_cwd(dirs, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "must-not-leak-either")
    jail = standard_jail(dirs)
    seen = inside_json(jail, """
        import json, os, torch
        a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(),
                          "matmul": (a @ a.T).tolist(), "threads": torch.get_num_threads()}))
    """)
    assert seen["env"] == ENV
    assert seen["cwd"] == "/work"
    assert seen["matmul"] == [[5.0, 14.0], [14.0, 50.0]]
    assert seen["threads"] >= 1


@needs_bwrap
def test_the_script_under_work_runs_by_its_inside_path(dirs):
    jail = standard_jail(dirs)
    launch = jail.launch([jail.python, jail.path("/work/train.py")], env=ENV, cwd="/work")
    assert launch.sandboxed and jail.path("/work/train.py") == "/work/train.py"
    assert launch.cwd == str(dirs["src"])  # bwrap itself runs in the host dir behind /work
    done = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from train.py\n"


@needs_bwrap
def test_exit_status_and_death_by_signal_read_as_without_a_sandbox(dirs):
    jail = standard_jail(dirs)
    for code, expected in (("raise SystemExit(3)", 3), ("import os; os.kill(os.getpid(), 9)", -9)):
        launch = jail.launch([jail.python, "-c", code], env=ENV, cwd="/work")
        rc = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True).returncode
        assert launch.returncode(rc) == expected


# -- what it cannot read ---------------------------------------------------------------------


@needs_bwrap
def test_home_and_the_engines_environment_are_out_of_reach(dirs, monkeypatch):
    marker = f"sk-ant-{uuid.uuid4().hex}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", marker)
    jail = standard_jail(dirs)
    seen = inside_json(jail, f"""
        import json, os
        def read(path):
            try:
                with open(path, "rb") as f:
                    return f.read().decode("latin-1")
            except OSError as e:
                return type(e).__name__
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        environs = "".join(read(f"/proc/{{p}}/environ") for p in pids)
        print(json.dumps({{
            "secret": read({str(dirs["home"] / "secret.txt")!r}),
            "home_listing": os.path.exists({str(dirs["home"])!r}),
            "engine_environ": read("/proc/{os.getpid()}/environ"),
            "pids": pids,
            "comms": [read(f"/proc/{{p}}/comm").strip() for p in pids],
            "leaked": {marker!r} in environs,
            "root": sorted(os.listdir("/")),
        }}))
    """)
    assert seen["secret"] == "FileNotFoundError"
    assert not seen["home_listing"]
    assert os.getpid() in seen["pids"] or seen["engine_environ"] == "FileNotFoundError"
    assert marker not in seen["engine_environ"] and not seen["leaked"]
    # only the sandbox's own processes: bwrap's init (pid 1) and the command
    assert seen["pids"][0] == 1 and len(seen["pids"]) <= 3, seen
    assert set(seen["comms"][1:]) <= {"python", "python3", Path(sys.executable).name[:15]}, seen
    for absent in ("root", "home", "var", "run", "mnt", "srv", "opt", "media", "boot"):
        if absent not in Path(sys.base_prefix).parts[1:2] + Path(sys.prefix).parts[1:2]:
            assert absent not in seen["root"], seen["root"]


@needs_bwrap
def test_host_tmp_is_not_visible_and_tmp_is_private(dirs):
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir(), prefix="host-only-") as f:
        f.write(b"host data")
        f.flush()
        seen = inside_json(standard_jail(dirs), f"""
            import json, os
            print(json.dumps({{"exists": os.path.exists({f.name!r}), "tmp": os.listdir("/tmp"),
                              "shm": os.listdir("/dev/shm")}}))
        """)
    assert seen == {"exists": False, "tmp": [], "shm": []}


# -- what it cannot write --------------------------------------------------------------------


@needs_bwrap
def test_only_scratch_is_writable(dirs):
    jail = standard_jail(dirs)
    seen = inside_json(jail, """
        import json, os, sys, tempfile
        def write(path):
            try:
                with open(path, "w") as f:
                    f.write("planted")
                return "written"
            except OSError as e:
                return type(e).__name__
        targets = {"work": "/work/planted.py", "usr": "/usr/planted", "root": "/planted",
                   "prefix": os.path.join(sys.prefix, "planted"),
                   "base_prefix": os.path.join(sys.base_prefix, "planted"),
                   "site": os.path.join(os.path.dirname(os.__file__), "planted.py"),
                   "scratch": "/scratch/out.txt", "tmp": "/tmp/x", "shm": "/dev/shm/x"}
        print(json.dumps({k: write(v) for k, v in targets.items()}))
    """)
    assert seen.pop("scratch") == "written" and seen.pop("tmp") == "written" and seen.pop("shm") == "written"
    assert all(v in ("OSError", "PermissionError", "FileNotFoundError") for v in seen.values()), seen
    assert (dirs["scratch"] / "out.txt").read_text() == "planted"
    assert not (dirs["src"] / "planted.py").exists()
    assert not Path(sys.prefix, "planted").exists()


@needs_bwrap
def test_a_git_hook_cannot_be_planted(tmp_path):
    repo = committed_repo(tmp_path / "repo", {"train.py": "print('x')\n"})
    hooks = repo / ".git" / "hooks"
    for mounts in (Mounts(ro={"/work": repo}), Mounts(rw={"/work": repo})):
        seen = inside_json(BWRAP.jail(mounts), f"""
            import json, os
            def write(path):
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as f:
                        f.write("#!/bin/sh\\necho owned\\n")
                    return "written"
                except OSError as e:
                    return type(e).__name__
            print(json.dumps({{"git": os.listdir("/work/.git"), "train": os.path.exists("/work/train.py"),
                              "inside": write("/work/.git/hooks/pre-commit"),
                              "host": write({str(hooks / "pre-commit")!r})}}))
        """)
        assert seen["git"] == [] and seen["train"]
        assert seen["inside"] != "written"
        # the host path does not exist inside: a plant there lands in the sandbox's own tmpfs root
        # or fails; either way nothing reaches the repository
        assert not (hooks / "pre-commit").exists()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                          text=True).stdout == ""


# -- hiding files under a bound tree ---------------------------------------------------------


@needs_bwrap
def test_hidden_files_read_empty_while_their_siblings_stay_readable(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "valid_text.py").write_text("VALIDATION = 'held-out text'\n")
    (lib / "sibling.py").write_text("OK = 1\n")
    (lib / "pkg" / "inner.txt").write_text("hidden dir content")
    many = []
    for i in range(60):  # about as many as the stdlib validation split
        (lib / f"v{i:02d}.py").write_text(f"TEXT = 'validation {i}'\n")
        many.append(lib / f"v{i:02d}.py")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(lib)], check=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    real_hidden, real_sibling = stdlib / "this.py", stdlib / "antigravity.py"
    hide = sandbox.with_bytecode([lib / "valid_text.py", real_hidden, *many]) + [lib / "pkg"]
    assert any("__pycache__" in p for p in hide)
    jail = BWRAP.jail(Mounts(ro={"/stdlib": lib}, hide=hide))
    seen = inside_json(jail, f"""
        import glob, json, os
        def read(path):
            try:
                with open(path, "rb") as f:
                    return f.read().decode("latin-1")
            except OSError as e:
                return type(e).__name__
        print(json.dumps({{
            "valid": read("/stdlib/valid_text.py"),
            "valid_pyc": [read(p) for p in glob.glob("/stdlib/__pycache__/valid_text.*")],
            "sibling": read("/stdlib/sibling.py"),
            "sibling_pyc": [len(read(p)) for p in glob.glob("/stdlib/__pycache__/sibling.*")],
            "many": sorted(set(read(f"/stdlib/v{{i:02d}}.py") for i in range(60))),
            "dir": os.listdir("/stdlib/pkg"),
            "real_hidden": read({str(real_hidden)!r}),
            "real_sibling": len(read({str(real_sibling)!r})),
        }}))
    """, cwd="/")
    assert seen["valid"] == "" and seen["valid_pyc"] and set(seen["valid_pyc"]) == {""}
    assert seen["sibling"] == "OK = 1\n" and all(n > 0 for n in seen["sibling_pyc"])
    assert seen["many"] == [""]
    assert seen["dir"] == []
    assert seen["real_hidden"] == "" and seen["real_sibling"] > 0
    assert "Zen of Python" not in seen["real_hidden"]


# -- network -------------------------------------------------------------------------------------


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback(dirs):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        seen = inside_json(standard_jail(dirs), f"""
            import json, socket
            def attempt(fn):
                try:
                    fn()
                    return "ok"
                except OSError as e:
                    return type(e).__name__
            def connect(host, port):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5)
                try:
                    s.connect((host, port))
                finally:
                    s.close()
            print(json.dumps({{
                "loopback": attempt(lambda: connect("127.0.0.1", {port})),
                "outbound": attempt(lambda: connect("1.1.1.1", 53)),
                "dns": attempt(lambda: socket.getaddrinfo("example.com", 443)),
                "interfaces": [name for _, name in socket.if_nameindex()],
            }}))
        """)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the test's server
    finally:
        server.close()
    assert seen["loopback"] == "ConnectionRefusedError"
    assert seen["outbound"] != "ok" and seen["dns"] != "ok"
    assert seen["interfaces"] == ["lo"]


# -- everything inside dies with it -------------------------------------------------------------

DAEMON = """
    import os, sys, time
    marker, ready = sys.argv[1], sys.argv[2]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # the daemon: no parent, own session, own process group
            loop = "import time\\nwhile True: time.sleep(0.05)"
            os.execv(sys.executable, [sys.executable, "-c", loop, marker])
        os._exit(0)
    os.wait()
    print(ready, flush=True)
    sys.stdin.readline()  # the test says when to exit (or kills bwrap first)
"""


def _daemons(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmdline = p.info["cmdline"] or []
            is_daemon = len(cmdline) > 2 and cmdline[-1] == marker and "while True" in cmdline[-2]  # not bwrap
            if is_daemon and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@needs_bwrap
@pytest.mark.parametrize("how", ["main process exits", "SIGTERM to bwrap's group", "SIGKILL to bwrap's group"])
def test_a_double_forked_daemon_dies_with_the_sandbox(dirs, how):
    marker = f"daemon-{uuid.uuid4().hex}"
    jail = standard_jail(dirs)
    launch = jail.launch([jail.python, "-c", textwrap.dedent(DAEMON), marker, "READY"], env=ENV, cwd="/work")
    # as the engine's runner starts it: own session and process group
    proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, start_new_session=True, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        daemons = _daemons(marker)
        assert daemons, "the daemon should be running while the sandbox is"
        assert all(os.getpgid(d.pid) != proc.pid for d in daemons)  # killpg alone cannot reach it
        if how == "main process exits":
            proc.stdin.write("exit\n")
            proc.stdin.flush()
        elif how.startswith("SIGTERM"):
            os.killpg(proc.pid, signal.SIGTERM)
        elif how.startswith("SIGKILL"):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if how == "main process exits":
            assert proc.returncode == 0
        assert _wait_until(lambda: not _daemons(marker)), f"daemon survived: {how}"
    finally:
        for d in _daemons(marker):
            d.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stdin.close()


# -- mounts and the Python installation ---------------------------------------------------------


@needs_bwrap
def test_a_venv_under_a_mount_point_moves_out_of_the_way(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv")
    point = os.path.dirname(sys.prefix)
    if point in ("/",) or any(sandbox._is_under(point, r) for r in sandbox.RESERVED):
        pytest.skip(f"the venv's parent {point} cannot be a mount point")
    (tmp_path / "mine.txt").write_text("mine")
    jail = BWRAP.jail(Mounts(ro={point: tmp_path}))
    assert jail.python.startswith(sandbox.RELOCATED_VENV + "/")
    seen = inside_json(jail, f"""
        import json, os, sys, torch
        print(json.dumps({{"prefix": sys.prefix, "mine": open({point + "/mine.txt"!r}).read()}}))
    """, cwd="/")
    assert seen == {"prefix": sandbox.RELOCATED_VENV, "mine": "mine"}


def test_bad_mounts_are_refused_in_both_modes(tmp_path):
    for sb in (sandbox.detect("off"), BWRAP):
        with pytest.raises(SandboxError, match="cannot mount over /usr"):
            sb.jail(Mounts(ro={"/usr/share/x": tmp_path}))
        with pytest.raises(SandboxError, match="does not exist"):
            sb.jail(Mounts(ro={"/work": tmp_path / "missing"}))
        with pytest.raises(SandboxError, match="absolute"):
            sb.jail(Mounts(ro={"work": tmp_path}))
        with pytest.raises(SandboxError, match="twice"):
            sb.jail(Mounts(ro={"/work": tmp_path}, rw={"/work/": tmp_path}))
        with pytest.raises(SandboxError, match="does not exist"):  # bwrap would mkdir it on the host
            sb.jail(Mounts(rw={"/scratch": tmp_path}, ro={"/scratch/data": tmp_path}))
    # a checkpoint that train.py replaced with a link to a host file is not bound anywhere
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (tmp_path / "model.pt").symlink_to(secret)
    for sb in (sandbox.detect("off"), BWRAP):
        with pytest.raises(SandboxError, match="symbolic link"):
            sb.jail(Mounts(ro={"/ckpt/model.pt": tmp_path / "model.pt"}))


# -- off mode and detection --------------------------------------------------------------------


def test_off_mode_gives_a_runnable_command_with_host_paths_and_the_given_env(dirs, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    sb = sandbox.detect("off")
    assert sb.kind == "none" and not sb.enabled and sb.describe().startswith("off: ")
    jail = sb.jail(Mounts(ro={"/work": dirs["src"]}, rw={"/scratch": dirs["scratch"]}))
    assert jail.python == sys.executable
    assert jail.path("/work/train.py") == str(dirs["src"] / "train.py")
    assert jail.path("/scratch") == str(dirs["scratch"])
    assert jail.path("/tmp/elsewhere") == "/tmp/elsewhere"
    code = "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))"
    launch = jail.launch([jail.python, "-c", code], env=ENV, cwd="/work")
    assert not launch.sandboxed and launch.argv == [sys.executable, "-c", code]
    assert launch.env == ENV and launch.cwd == str(dirs["src"])
    assert launch.returncode(137) == 137  # no bwrap: no translation
    done = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True)
    assert json.loads(done.stdout) == {"env": ENV, "cwd": str(dirs["src"])}
    launch = jail.launch([jail.python, jail.path("/work/train.py")], env=ENV, cwd="/work")
    done = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True)
    assert done.stdout == "hello from train.py\n"


def test_detect_without_bwrap_on_path_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    sb = sandbox.detect("auto")
    assert sb.kind == "none" and "bubblewrap not found" in sb.reason
    assert sb.describe() == "off: bubblewrap not found (no bwrap on PATH)"
    with pytest.raises(SandboxError) as info:
        sandbox.detect("bwrap")
    message = str(info.value)
    assert "\n" not in message and "`bubblewrap`" in message
    with pytest.raises(SandboxError, match="must be one of"):
        sandbox.detect("docker")


def test_detect_reports_the_probes_error(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bubblewrap 0.8.0'; exit 0; }\n"
                    "echo 'bwrap: setting up uid map: Permission denied' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sb = sandbox.detect("auto")
    assert sb.kind == "none"
    assert "setting up uid map: Permission denied" in sb.reason and "0.8.0" in sb.reason
    with pytest.raises(SandboxError, match="uid map"):
        sandbox.detect("bwrap")


def test_off_never_probes(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'probed'}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sandbox.detect("off").describe() == 'off: sandbox = "off" in the configuration'
    assert not (tmp_path / "probed").exists()


@needs_bwrap
def test_detect_caches_the_probe_and_describes_the_version():
    assert sandbox.detect("auto") is sandbox.detect("bwrap")
    assert BWRAP.describe().startswith("bwrap ") and BWRAP.version != "?"
    assert shutil.which("bwrap") is not None


@needs_bwrap
def test_a_venv_under_tmp_moves_out_of_the_private_tmpfs(tmp_path):
    """/tmp inside is a fresh tmpfs: a venv there (`python -m venv /tmp/v`) is bound at
    /venv, or its python would not exist in the sandbox (exit 127)."""
    if sandbox._is_under(os.path.realpath(sys.prefix), "/tmp"):
        pytest.skip("the venv made here borrows this one's packages, which are under /tmp themselves")
    venv = Path(tempfile.mkdtemp(prefix="ar-venv-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        here = [p for p in sys.path if p.endswith("site-packages")] + [str(Path(__file__).resolve().parents[2])]
        site = next(venv.glob("lib/python*/site-packages"))
        (site / "main.pth").write_text("\n".join(here) + "\n")  # this checkout and its packages
        script = textwrap.dedent("""
            import json, subprocess, sys
            from engine import sandbox
            jail = sandbox.detect("bwrap").jail(sandbox.Mounts(ro={"/exp": sys.argv[1]}))
            launch = jail.launch([jail.python, "-c", "import sys; print(sys.prefix)"], env={"PATH": "/usr/bin"})
            done = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True)
            print(json.dumps([jail.python, done.returncode, done.stdout.strip(), done.stderr[-300:]]))
        """)
        out = subprocess.run([str(venv / "bin" / "python"), "-c", script, str(tmp_path)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        python, rc, prefix, err = json.loads(out.stdout)
        assert python.startswith(sandbox.RELOCATED_VENV + "/") and rc == 0 and prefix == sandbox.RELOCATED_VENV, err
    finally:
        shutil.rmtree(venv, ignore_errors=True)
