"""Experiments on a Ray cluster (``--ray ADDRESS``, ``[loop] ray``): training and scoring
run on a node with a GPU; the engine, journal, decisions, agents and monitor stay here.

Each worker (a lane, engine/lanes.py) gets a ``RemoteRunner``. Its first run creates a Ray
actor, ``NodeRunner``, that asks for ``[loop] ray_resources`` (one GPU by default) and
keeps it for the engine's life: one worker, one GPU slot, wherever Ray placed it. Per run:

- the head ships the commit's ``git archive`` (tracked files only, as a local run exports
  them) with the call, and follows it: it polls the actor every ``POLL_SECONDS`` for new
  bytes of the run's log, which it appends to the experiment's ``run.log``, and for the
  phase (``evaluating``), which it mirrors into ``state.json``;
- on the node, the actor runs ``engine.trial.run_trial``, the very function a local
  worker runs, against a ``NodeSession``: the same bubblewrap sandbox (mounts, hidden
  validation sources computed from the node's own data manifest, minimal environment),
  the same warm training process started ahead, the same wall-clock limit
  (``training_limit``) and hang detection, the same trusted scorer outside the sandbox
  with its sandboxed model servers. The scorer is the head's trusted ``prepare.py``,
  shipped and checked against the run's SHA-256 before every use;
- the node's data cache is built by that ``prepare.py`` when it is missing (under a lock,
  one build per node) and must hold the head's data: the SHA-256 of ``train.bin`` and
  ``val.bin`` in its manifest must equal the head's; otherwise the loop pauses with the
  reason. Its manifest's own hash (hidden paths are the node's) is then the one the run's
  checks hold it to;
- what comes back: the run's ``Outcome`` (the metric read by the node's trusted scorer from
  its ``eval.json``), that ``eval.json`` (written into the experiment's directory here and
  read again), the checkpoint (up to ``MAX_CHECKPOINT_BYTES``, kept here like a local one
  for the best) and the run's timings.

Kills. Skip and stop ask the node to end the run (the same process-group kill as a local
run: SIGTERM, then SIGKILL after the grace); a node that does not answer within the grace
gets its actor killed through Ray (``ray.kill``), and with it the run: every process the
actor started dies with it (``PR_SET_PDEATHSIG``; bwrap's ``--die-with-parent``).
Timeouts and hangs are found on the node, as locally; a head-side deadline (the run's
limits plus ``BACKSTOP_SECONDS``) ends a run through Ray if the node's own watch failed.
A node (or actor) that dies, or stops answering for ``UNRESPONSIVE_SECONDS``, makes the run
``interrupted``; the worker starts a new actor for its next run, and the loop goes on.

Trust: the node must be a machine you trust as much as the head. What comes back from it is
believed: the scorer's eval.json is produced by the trusted scorer on the node, outside the
sandbox, exactly as it would be here. Nothing from the node is executed on the head.

Ray is optional (``pip install 'autoresearch[ray]'``) and imported only when used.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from . import gitops, rundir, sandbox
from .config import Config
from .errors import UsageError
from .integrity import Fingerprint, cache_dir, manifest_path, sha256_file
from .results import METRIC, is_number
from .runner import minimal_env, run_process, write_note
from .session import Lane, Session
from .trial import Outcome, ScorerTampered, eval_limit, run_trial, training_limit
from .untrusted import one_line, strip_control

POLL_SECONDS = 0.5  # how often the head asks a node for new log bytes
STATS_SECONDS = 2.0  # how often a node's utilization goes into state.json (the monitor shows it)
READ_LIMIT = 1 << 20  # bytes of log per poll
UNRESPONSIVE_SECONDS = 60.0  # a node that answers no poll for this long is taken for dead
STOP_WAIT_SECONDS = 15.0  # beyond the kill grace, for a node to end a run it was asked to end
BACKSTOP_SECONDS = 60.0  # beyond a run's own limits before the head ends it through Ray
WAIT_NOTE_SECONDS = 5.0  # waiting this long for a node with free resources: say so
PROBE_SECONDS = 5.0  # to reach the cluster's address at start-up
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024  # larger checkpoints stay on the node (and are removed)
NODE_DIR_ENV = "AUTORESEARCH_NODE_DIR"  # where a node keeps its runs' files (default: a temp dir)
INSTALL_HINT = "pip install 'autoresearch[ray]'"


# --- the head: connecting, counting slots, one runner per worker ------------------------------


_connected: str | None = None  # the address this process's Ray driver is connected to


def make_remote_lanes(config: Config) -> list[Lane]:
    """The workers of an engine whose runs go to the Ray cluster at ``[loop] ray``: as many
    as ``workers`` says, or, unset, as many as the cluster's nodes can hold at once."""
    loop = config.loop
    slots = connect(loop.ray, loop.ray_resources)
    workers = loop.workers if loop.workers is not None else min(slots, 64)
    if workers < 1:
        raise UsageError(f"no node of the Ray cluster at {loop.ray} has {describe_resources(loop.ray_resources)}: "
                         "start one with `ray start --address=HEAD:PORT` (docs/ray.md), "
                         "or set [loop] workers to wait for one")
    loop.workers = workers
    return [Lane(k, remote=RemoteRunner(k, config)) for k in range(workers)]


def connect(address: str, resources: dict[str, float]) -> int:
    """Connect this process to the cluster (once); returns how many runs its live nodes
    can hold at once. Bad input (no Ray installed, nothing at the address) is one line."""
    global _connected
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray on this machine: {INSTALL_HINT}") from None
    target = resolve_address(address)
    if _connected != target:
        probe(target)
        if ray.is_initialized():
            ray.shutdown()
        try:
            ray.init(address=target, log_to_driver=False, logging_level=logging.ERROR, namespace="autoresearch")
        except Exception as e:  # Ray's errors are many and long: one line
            raise UsageError(f"cannot join the Ray cluster at {target}: {one_line(e)[:300]}") from None
        _connected = target
    return cluster_slots(resources)


def resolve_address(address: str) -> str:
    """``auto``: the cluster this machine belongs to (``$RAY_ADDRESS``, or the one
    ``ray start`` last recorded here), as Ray resolves it; anything else as given."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        found = recorded.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise UsageError("--ray auto: no Ray cluster on this machine (start one with `ray start --head`, "
                         "or give the head's address)")
    return found


def probe(address: str) -> None:
    """A TCP connection to the head first: ``ray.init`` waits minutes on a wrong address."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageError(f'--ray {address}: give the Ray head as HOST:PORT (like 10.0.0.5:6379) or "auto"')
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as e:
        raise UsageError(f"no Ray cluster answers at {address} ({one_line(e.strerror or e)}): start its head "
                         "with `ray start --head --port=6379` there, or check --ray / [loop] ray") from None


def cluster_slots(resources: dict[str, float]) -> int:
    """How many runs asking for ``resources`` the live nodes can hold at once."""
    import ray

    total = 0
    for node in ray.nodes():
        if node.get("Alive"):
            total += node_slots(node.get("Resources") or {}, resources)
    return total


def node_slots(have: dict[str, float], need: dict[str, float]) -> int:
    return min(int(math.floor(have.get(k, 0.0) / v + 1e-9)) for k, v in need.items())


def describe_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in resources.items())


def actor_options(resources: dict[str, float]) -> dict:
    """Ray's options for an actor that holds ``resources`` (CPU and GPU have their own)."""
    options: dict = {"num_cpus": resources.get("CPU", 0.0)}
    if "GPU" in resources:
        options["num_gpus"] = resources["GPU"]
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    if custom:
        options["resources"] = custom
    return options


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over the engine's source: a node must run the code the head runs."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass
class NodeSetup:
    """What a worker's actor needs to know once: the run's configuration and trusted files."""

    index: int
    config: Config
    budget: float
    timeout: float
    kill_grace: float
    sandbox_mode: str  # "bwrap" when the head sandboxes (the node must too), else the configured mode
    prepare: bytes | None  # the run's trusted prepare.py (None with a [target])
    prepare_sha256: str | None
    artifacts: dict[str, str]  # the head's data: artifact name -> SHA-256 (from its manifest)
    corpus: dict  # how the head's cache was built (prepare.py's manifest "corpus")
    resources: dict[str, float]
    code: str  # code_digest() on the head


@dataclass
class TrialSpec:
    """One run of one commit, shipped to the node."""

    id: int
    n: int
    run: int
    holdout: bool
    commit: str
    archive: bytes  # git archive of the commit: its tracked files
    timings: dict[str, float] = field(default_factory=dict)


class NodeGone(Exception):
    """The node (or the actor on it) died or stopped answering."""


class RemoteRunner:
    """One worker's runs on the cluster, followed from the head (in the worker's thread)."""

    def __init__(self, index: int, config: Config):
        self.index = index
        self.config = config
        self.actor = None
        self.node: dict = {}  # the actor's hello(): host, ip, pid
        self.trials = 0
        self._stats_at = 0.0  # when the node's utilization last went into state.json

    @property
    def label(self) -> str:
        node = self.node
        return f"{node.get('host', '?')} ({node.get('ip', '?')})" if node else "?"

    def run_trial(self, s: Session, n: int, commit: str, exp_dir: Path, timings: dict[str, float], *,
                  holdout: bool = False, run: int = 1) -> Outcome:
        """engine/trial.py's run_trial, on a node: the same Outcome, the same run.log."""
        import ray

        s.set_phase("running" if run == 1 else "confirming")
        log = exp_dir / "run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            waited = self._ensure_actor(s, out)
            if waited is not None:
                return waited
            self.trials += 1
            s.update_flight(node=self.label)  # the monitor's row names where it runs
            spec = TrialSpec(self.trials, n, run, holdout, commit, s.wt.archive(commit), dict(timings))
            try:
                return self._follow(s, spec, exp_dir, out, timings)
            except (NodeGone, ray.exceptions.RayError) as e:
                why = str(e) if isinstance(e, NodeGone) else type(e).__name__
                label = self.label
                self._kill()
                _note(out, f"the Ray node {label} went away: {why}")
                return Outcome("interrupted", error=f"the Ray node {label} went away during this experiment ({why})")

    def close(self) -> None:
        """The engine stops: the actor (and everything it started) goes."""
        self._kill()

    # -- following one run ----------------------------------------------------------------

    def _follow(self, s: Session, spec: TrialSpec, exp_dir: Path, out, timings: dict[str, float]) -> Outcome:
        import ray

        _note(out, f"ray: node {self.label}, worker pid {self.node.get('pid')}")
        ref = self.actor.run.remote(spec)
        offset, phase = 0, None
        limit = training_limit(s) + s.config.loop.effective_startup() + eval_limit(s) + BACKSTOP_SECONDS
        deadline = None
        stop_sent, killed = None, None
        while True:
            s.tick()
            done, _ = ray.wait([ref], timeout=POLL_SECONDS)
            offset, now_phase = self._pull(s, spec.id, offset, out)
            if now_phase != phase:
                if now_phase == "evaluating":
                    s.set_phase("evaluating")
                if now_phase in ("running", "confirming", "evaluating") and deadline is None:
                    deadline = time.monotonic() + limit
                phase = now_phase
            if done:
                break
            now = time.monotonic()
            if stop_sent is None and s.should_kill():
                killed = Outcome(s.killed_status(), error=s.killed_reason())
                self.actor.stop.remote(spec.id, killed.status, killed.error)
                stop_sent = now
            elif stop_sent is not None and now - stop_sent > s.kill_grace + STOP_WAIT_SECONDS:
                self._kill()
                _note(out, "the node did not end the run when asked: its Ray actor was killed")
                return killed
            elif stop_sent is None and deadline is not None and now > deadline:
                self._kill()
                _note(out, f"stopping the run through Ray: no result after {limit:g} s (the head's limit)")
                return Outcome("timeout", error=f"no result from the Ray node {self.label} after {limit:g} s of "
                                                f"wall time (the head's limit; its actor was killed)")
        result = ray.get(ref)
        size = result.get("log_size", 0)
        while offset < size:
            before = offset
            offset, _ = self._pull(s, spec.id, offset, out)
            if offset == before:
                break
        if result.get("crashed"):
            name, message = result["crashed"]
            if name == "ScorerTampered":
                raise ScorerTampered(message)
            raise RuntimeError(f"on the Ray node {self.label}: {name}: {message}")
        if result.get("refused"):
            why = f"Ray node {self.label}: {result['refused']}"
            self._kill()
            s.pause_with_error(why)
            return Outcome("interrupted", error=why)
        timings.update(result.get("timings") or {})
        if result.get("pause"):
            s.pause_with_error(result["pause"])
        return self._bring_back(s, result, exp_dir, out)

    def _bring_back(self, s: Session, result: dict, exp_dir: Path, out) -> Outcome:
        """The node's outcome, with its eval.json and checkpoint where a local run has them."""
        outcome: Outcome = result["outcome"]
        text = result.get("eval_json")
        if text is not None:
            rundir.atomic_write_text(exp_dir / "eval.json", text)
        checkpoint = result.get("checkpoint")
        scratch = exp_dir / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        if checkpoint is not None:
            scratch.mkdir(parents=True)
            (scratch / "checkpoint.pt").write_bytes(checkpoint)
        elif result.get("checkpoint_note"):
            _note(out, result["checkpoint_note"])
        if outcome.status == "ok" and s.config.target is None:
            # The number is the one in eval.json, read here as a local run reads it.
            data = rundir.read_json(exp_dir / "eval.json")
            value = data.get(METRIC) if isinstance(data, dict) else None
            if not is_number(value):
                return replace(outcome, status="crash", metric=None, holdout=None,
                               error=f"eval.json from the Ray node has no numeric {METRIC}")
            held = data.get("holdout_bpb")
            outcome.metric, outcome.holdout = float(value), float(held) if is_number(held) else None
        return outcome

    def _pull(self, s: Session, trial_id: int, offset: int, out) -> tuple[int, str | None]:
        """New bytes of the run's log into run.log; the node's phase; now and then its
        utilization into the experiment's flight (state.json)."""
        import ray

        try:
            data, phase, stats = ray.get(self.actor.read.remote(trial_id, offset), timeout=UNRESPONSIVE_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise NodeGone(f"no answer for {UNRESPONSIVE_SECONDS:g} s") from None
        if data:
            out.write(data)
            out.flush()  # the monitor tails this file
        now = time.monotonic()
        if stats and now - self._stats_at >= STATS_SECONDS:
            self._stats_at = now
            s.update_flight(node_util=stats)
        return offset + len(data), phase

    # -- the actor ----------------------------------------------------------------------------

    def _ensure_actor(self, s: Session, out) -> Outcome | None:
        """This worker's actor, started and checked (waiting, as long as it takes, for a node
        with free resources). Returns an Outcome when the run cannot start."""
        import ray

        if self.actor is not None:
            return None
        resources = self.config.loop.ray_resources
        actor = ray.remote(NodeRunner).options(max_concurrency=4, max_restarts=0,
                                               **actor_options(resources)).remote(self._setup(s))
        hello = actor.hello.remote()
        started, said = time.monotonic(), False
        while True:
            s.tick()
            done, _ = ray.wait([hello], timeout=POLL_SECONDS)
            if done:
                break
            if s.should_kill():
                ray.kill(actor)
                return Outcome(s.killed_status(), error=s.killed_reason())
            if not said and time.monotonic() - started > WAIT_NOTE_SECONDS:
                said = True
                what = f"waiting for a Ray node with {describe_resources(resources)} free"
                _note(out, what)
                s.say(f"worker {self.index}: {what}")
        try:
            info = ray.get(hello)
        except ray.exceptions.RayError as e:
            ray.kill(actor)
            return Outcome("interrupted", error=f"the Ray worker did not start ({one_line(e)[:300]})")
        self.actor, self.node = actor, info
        if info.get("problem"):
            why = f"Ray node {self.label}: {info['problem']}"
            self._kill()
            _note(out, why)
            s.pause_with_error(why)
            return Outcome("interrupted", error=why)
        return None

    def _setup(self, s: Session) -> NodeSetup:
        prepare = None
        if s.config.target is None:
            prepare = s.rd.scorer.read_bytes()
            if hashlib.sha256(prepare).hexdigest() != s.fingerprint.prepare_sha256:
                raise ScorerTampered(f"the trusted scorer {s.rd.scorer} no longer matches prepare.py "
                                     "as the run started")
        manifest = rundir.read_json(manifest_path()) if s.config.target is None else None
        manifest = manifest if isinstance(manifest, dict) else {}
        artifacts = {name: a.get("sha256") for name, a in (manifest.get("artifacts") or {}).items()
                     if isinstance(a, dict)}
        return NodeSetup(
            index=self.index, config=s.config, budget=s.budget, timeout=s.timeout, kill_grace=s.kill_grace,
            sandbox_mode="bwrap" if s.sandbox.enabled else s.config.loop.sandbox, prepare=prepare,
            prepare_sha256=s.fingerprint.prepare_sha256 if s.fingerprint else None, artifacts=artifacts,
            corpus=manifest.get("corpus") if isinstance(manifest.get("corpus"), dict) else {},
            resources=dict(s.config.loop.ray_resources), code=code_digest())

    def _kill(self) -> None:
        if self.actor is not None:
            import ray

            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:  # already gone, or Ray itself is going down
                pass
        self.actor, self.node = None, {}


def close_remote(s: Session) -> None:
    """Every remote worker's actor goes with the engine."""
    for lane in s.lanes:
        if lane.remote is not None:
            lane.remote.close()


def _note(out, text: str) -> None:
    write_note(out, strip_control(text))  # text from Ray or a node


# --- the node -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _nvml():
    """pynvml, initialised once for this process; None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _gpu_readings(indices: list[int]) -> list[list]:
    """[index, util %, memory used, memory total] of each of these GPUs (NVML); [] without."""
    pynvml = _nvml() if indices else None
    if pynvml is None:
        return []
    out = []
    for i in indices:
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append([i, pynvml.nvmlDeviceGetUtilizationRates(h).gpu, mem.used, mem.total])
        except Exception:
            continue
    return out


class ShippedCommit:
    """The worktree a NodeSession exports from: the commit's archive, shipped by the head."""

    def __init__(self, commit: str, archive: bytes):
        self.commit, self.data = commit, archive

    def export(self, sha: str, dest: Path) -> None:
        if sha != self.commit:
            raise ValueError(f"asked for commit {sha}, shipped {self.commit}")
        gitops.extract_archive(self.data, dest)


class NodeSession:
    """What engine/trial.py (run_trial) and engine/warm.py ask of a Session, on a node.

    run_trial reads: config, budget, timeout, kill_grace, python, sandbox, rd.root (slots),
    rd.scorer (the trusted prepare.py), rd.worktree (where Fingerprint.of finds prepare.py),
    fingerprint, lane.env, wt.export, warm_slot; and calls set_phase, update_flight, tick,
    should_kill, stopping, stop_event, killed_status, killed_reason, pause_with_error.
    Phases and the training's process group are kept for the head's polls; a pause is
    handed back to the head, which pauses the loop.
    """

    def __init__(self, setup: NodeSetup, sb: sandbox.Sandbox, root: Path, env: dict[str, str]):
        self.config = setup.config
        self.budget = setup.budget
        self.timeout = setup.timeout
        self.kill_grace = setup.kill_grace
        self.python = sys.executable
        self.sandbox = sb
        trusted = root / "trusted"
        self.rd = SimpleNamespace(root=root, scorer=trusted / "prepare.py", worktree=trusted)
        self.fingerprint = Fingerprint(setup.prepare_sha256, None)  # the manifest's: once the data is checked
        self.lane = Lane(setup.index, env=env)
        self.warm_slot = None
        self.wt: ShippedCommit | None = None
        self.stop_event = threading.Event()
        self.skip = False
        self.kill_status, self.kill_reason = "skipped", "skipped by a human"
        self.phase = "starting"
        self.pause: str | None = None
        self.fields: dict = {}

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def should_kill(self) -> bool:
        return self.stopping or self.skip

    def killed_status(self) -> str:
        return self.kill_status

    def killed_reason(self) -> str:
        return self.kill_reason

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def update_flight(self, **fields) -> None:
        self.fields.update(fields)

    def tick(self) -> None:
        pass

    def say(self, line: str) -> None:
        pass

    def pause_with_error(self, message: str) -> None:
        self.pause = message


def node_root() -> Path:
    return Path(os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir()) / f"autoresearch-node-{os.getuid()}")


def sweep_node_root(root: Path) -> None:
    """Directories of actors that died (their pid is gone): removed."""
    for d in root.iterdir() if root.is_dir() else ():
        pid = d.name.split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeRunner:
    """The Ray actor of one worker: runs its experiments on the node it was placed on.

    ``run`` runs one trial; ``read`` and ``stop`` answer the head meanwhile (the actor is
    threaded: ``max_concurrency``). Its files live in ``$AUTORESEARCH_NODE_DIR`` (default
    ``<tmp>/autoresearch-node-<uid>``), one directory per actor, removed by the next actor
    on the node once this one's process is gone.
    """

    def __init__(self, setup: NodeSetup):
        self.setup = setup
        self.session: NodeSession | None = None
        self.problem: str | None = None
        self.trial_id = 0
        self.log: Path | None = None
        self.exp_dir: Path | None = None
        self.accepted_manifest: str | None = None
        self.lock = threading.Lock()
        self._util_at, self._util_last = 0.0, None
        self._gpu_ids: list[int] = []  # the GPUs Ray gave this actor (physical indices)

    def hello(self) -> dict:
        """Who and where this actor is; ``problem``: why it cannot run this head's experiments."""
        import ray

        setup = self.setup
        info = {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "python": sys.version.split()[0]}
        if setup.code != code_digest():
            info["problem"] = (f"the node runs other autoresearch code than the head (engine {code_digest()[:12]}, "
                               f"head {setup.code[:12]}): install the same version there")
            return info
        try:
            sb = sandbox.detect(setup.sandbox_mode)
        except sandbox.SandboxError as e:
            info["problem"] = f"{e} (the head runs its experiments sandboxed)"
            return info
        root = node_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep_node_root(root)
        mine = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (mine / "trusted").mkdir(parents=True)
        threads = self._threads(ray)
        self._gpu_ids = [int(g) for g in ray.get_gpu_ids() if str(g).isdigit()]
        self.session = NodeSession(setup, sb, mine, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        if setup.prepare is not None:
            self.session.rd.scorer.write_bytes(setup.prepare)
            if sha256_file(self.session.rd.scorer) != setup.prepare_sha256:
                info["problem"] = "the scorer (prepare.py) arrived changed"
        info["sandbox"] = sb.describe()
        info["threads"] = threads
        return info

    def _threads(self, ray) -> str:
        """The worker's share of the node's cores: what it asked for, else cores / the runs
        this node can hold (as local workers share a machine)."""
        need = self.setup.resources
        if "CPU" in need:
            return str(max(1, int(need["CPU"])))
        here = ray.get_runtime_context().get_node_id()
        slots = 1
        for node in ray.nodes():
            if node.get("NodeID") == here:
                slots = max(1, node_slots(node.get("Resources") or {}, need))
        return str(max(1, (os.cpu_count() or 1) // slots))

    def run(self, spec: TrialSpec) -> dict:
        """One trial (engine/trial.py's run_trial). Never raises: the head reads what happened."""
        s = self.session
        with self.lock:
            if self.exp_dir is not None:
                shutil.rmtree(self.exp_dir, ignore_errors=True)  # the previous run's log, read by now
            self.exp_dir = s.rd.root / f"exp-{spec.n:04d}-{spec.run}"
            shutil.rmtree(self.exp_dir, ignore_errors=True)
            self.exp_dir.mkdir(parents=True)
            self.log = self.exp_dir / "run.log"
            self.log.touch()
            self.trial_id = spec.id
            s.skip, s.pause, s.phase, s.fields = False, None, "starting", {}
        try:
            refused = self._data_ready()
            if refused:
                return {"refused": refused, "log_size": self._log_size()}
            if s.should_kill():
                outcome = Outcome(s.killed_status(), error=s.killed_reason())
                return {"outcome": outcome, "timings": spec.timings, "log_size": self._log_size()}
            s.wt = ShippedCommit(spec.commit, spec.archive)
            timings = dict(spec.timings)
            outcome = run_trial(s, spec.n, spec.commit, self.exp_dir, timings, holdout=spec.holdout, run=spec.run)
            result = {"outcome": outcome, "timings": timings, "pause": s.pause}
            result.update(self._collect())
        except Exception as e:  # a bug or a broken node: the head stops as a local engine would
            result = {"crashed": (type(e).__name__, one_line(e)[:500])}
        result["log_size"] = self._log_size()
        return result

    def read(self, trial_id: int, offset: int) -> tuple[bytes, str | None, dict | None]:
        """New bytes of trial ``trial_id``'s log from ``offset``, its phase, and the node's
        utilization (``node_util``)."""
        s, log = self.session, self.log
        if trial_id != self.trial_id or log is None or s is None:
            return b"", None, None
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                return f.read(READ_LIMIT), s.phase, self._util()
        except OSError:
            return b"", s.phase, self._util()

    def _util(self) -> dict | None:
        """The node's CPU and memory, and the GPUs Ray gave this worker, sampled at most every
        STATS_SECONDS: {"cpu": %, "mem": [used, total], "gpus": [[index, util %, used, total]]}."""
        now = time.monotonic()
        if now - self._util_at < STATS_SECONDS:
            return self._util_last
        self._util_at = now
        try:
            import psutil

            mem = psutil.virtual_memory()
            out: dict = {"cpu": psutil.cpu_percent(interval=None), "mem": [mem.total - mem.available, mem.total],
                         "cores": os.cpu_count() or 0, "gpus": []}
        except Exception:  # utilization is a courtesy: never a reason for a run to fail
            return None
        out["gpus"] = _gpu_readings(self._gpu_ids)
        self._util_last = out
        return out

    def stop(self, trial_id: int, status: str, reason: str) -> None:
        """End trial ``trial_id`` (skip: "skipped"; the engine stops: "interrupted")."""
        s = self.session
        if s is None or trial_id != self.trial_id:
            return
        s.kill_status, s.kill_reason = status, reason
        if status == "interrupted":
            s.stop_event.set()
        else:
            s.skip = True

    # -- helpers ------------------------------------------------------------------------------

    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size if self.log is not None else 0
        except OSError:
            return 0

    def _data_ready(self) -> str | None:
        """The node's data cache, built by the trusted prepare.py if missing, must hold the
        head's data. Returns why not, or None."""
        s, setup = self.session, self.setup
        if s.config.target is not None:
            return None
        now = sha256_file(manifest_path())
        if self.accepted_manifest is not None:
            if now != self.accepted_manifest:
                return f"the data cache at {cache_dir()} changed since this worker began using it"
            return None
        if now is None:
            with open(node_root() / "prepare.lock", "a") as lock:  # one build per node
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not manifest_path().exists():
                    self._prepare()
            now = sha256_file(manifest_path())
        manifest = rundir.read_json(manifest_path())
        if now is None or not isinstance(manifest, dict):
            return f"python prepare.py did not build the data cache at {cache_dir()} (see the run's log)"
        theirs = {name: a.get("sha256") for name, a in (manifest.get("artifacts") or {}).items()
                  if isinstance(a, dict)}
        if theirs != setup.artifacts:
            ours, head = theirs.get("train.bin") or "?", setup.artifacts.get("train.bin") or "?"
            return (f"the data cache at {cache_dir()} holds other data than the head's (train.bin {ours[:12]}, "
                    f"head {head[:12]}): give the node the same Python (or --source text), or remove that cache "
                    "so that it is built again, then resume")
        self.accepted_manifest = now
        s.fingerprint = Fingerprint(setup.prepare_sha256, now)
        return None

    def _prepare(self) -> None:
        """``python prepare.py`` (the head's trusted copy, alone in its directory) builds the cache."""
        s = self.session
        corpus = self.setup.corpus
        args = ["--source", corpus["source"]] if corpus.get("kind") == "source" and corpus.get("source") else []
        with open(self.log, "ab") as f:
            write_note(f, f"no data cache at {cache_dir()} on this node: running python prepare.py")
        run_process([s.python, "prepare.py", *args], cwd=s.rd.worktree,
                    env=minimal_env({"AUTORESEARCH_CACHE": str(cache_dir())}), log_path=self.log,
                    should_kill=s.should_kill, grace=s.kill_grace)

    def _collect(self) -> dict:
        """eval.json and the checkpoint, for the head; the run's scratch goes."""
        out: dict = {"eval_json": None, "checkpoint": None}
        ev = self.exp_dir / "eval.json"
        if ev.is_file() and not ev.is_symlink():
            out["eval_json"] = ev.read_text(encoding="utf-8", errors="replace")
        scratch = self.exp_dir / "scratch"
        ckpt = scratch / "checkpoint.pt"
        if ckpt.is_file() and not ckpt.is_symlink():
            size = ckpt.stat().st_size
            if size <= MAX_CHECKPOINT_BYTES:
                out["checkpoint"] = ckpt.read_bytes()
            else:
                out["checkpoint_note"] = (f"the checkpoint ({size / 2**20:.0f} MiB) is larger than "
                                          f"{MAX_CHECKPOINT_BYTES / 2**20:.0f} MiB: not brought back from the node")
        shutil.rmtree(scratch, ignore_errors=True)
        return out
