"""A real, private Ray cluster on 127.0.0.1 for tests and benchmarks (``ray start --head``).

Its own ports, temp dir, data cache and node directory; every process Ray starts is in
the head's process group, which is ended (SIGTERM, then SIGKILL) on exit. No ``ray stop``:
that would end any other Ray on the machine too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

START_SECONDS = 120  # a loaded 2-core machine takes ~20 s to start a head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    root: Path
    node_dir: Path  # where the node keeps its runs ($AUTORESEARCH_NODE_DIR)
    node_cache: Path  # the node's data cache ($AUTORESEARCH_CACHE there)


@contextlib.contextmanager
def local_cluster(resources: dict[str, float], num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port = free_port()
    environ = dict(os.environ, AUTORESEARCH_CACHE=str(root / "node-cache"), AUTORESEARCH_NODE_DIR=str(root / "node"),
                   RAY_USAGE_STATS_ENABLED="0", **(env or {}))
    argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={port}", f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={root / 'ray'}"]
    log_path = root / "ray-start.log"
    log = open(log_path, "wb")
    head = subprocess.Popen(argv, env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: everything Ray starts
    try:
        deadline = time.monotonic() + START_SECONDS
        while b"Ray runtime started" not in log_path.read_bytes():
            if head.poll() is not None:
                raise RuntimeError(f"ray start failed: {log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start in {START_SECONDS} s")
            time.sleep(0.2)
        yield Cluster(f"127.0.0.1:{port}", root, root / "node", root / "node-cache")
    finally:
        disconnect()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)  # the group's other members
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def disconnect() -> None:
    """This process's Ray driver (the engine's connection) goes."""
    from engine import remote

    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
    remote._connected = None
