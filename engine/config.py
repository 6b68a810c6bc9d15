"""Configuration: defaults, then ``autoresearch.toml`` at the repository root, then flags.

Every key has a default; ``autoresearch status --json`` shows the values in force.
A malformed file or an unknown key raises ConfigError with one clear line.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UsageError
from .notify import looks_like_url, redact_url, unusable_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

CONFIG_FILENAME = "autoresearch.toml"

# USD per million tokens: (input, output, cache write, cache read). Users can override
# any model's row in [agent.prices] of autoresearch.toml.
# Cache write is the 5-minute rate. Prices as published on 2026-11-23.
DEFAULT_PRICES: dict[str, list[float]] = {
    "claude-fable-5-1": [10.0, 50.0, 12.50, 1.00],
    "claude-opus-5-5": [4.0, 20.0, 5.00, 0.40],
    "claude-opus-5": [5.0, 25.0, 6.25, 0.50],
    "claude-sonnet-5-5": [2.0, 10.0, 2.50, 0.20],
    "claude-sonnet-5": [2.0, 10.0, 2.50, 0.20],
    "claude-haiku-4-5": [1.0, 5.0, 1.25, 0.10],
}
DEFAULT_CLAUDE_MODEL = "claude-sonnet-5-5"


class ConfigError(UsageError):
    """A configuration problem, phrased as one line for the user."""


def cuda_available() -> bool:
    """A cheap guess without importing torch: an NVIDIA driver is present."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (without torch):
    the variable's own list when it is set, else one per GPU the driver lists."""
    names = os.environ.get("CUDA_VISIBLE_DEVICES")
    if names is not None:
        return [x.strip() for x in names.split(",") if x.strip() and x.strip() != "-1"]
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    return [str(i) for i in range(count)]


@dataclass
class LoopConfig:
    budget_seconds: float | None = None  # None: 300 on CUDA, 60 on CPU
    timeout_seconds: float | None = None  # None: budget * 1.5 + 120
    startup_seconds: float | None = None  # None: 90 on CUDA (torch.compile), 20 on CPU
    hang_seconds: float = 120.0
    baseline_runs: int = 2
    decision: str = "noise"  # or "strict"
    min_delta: float = 0.001
    noise_k: float = 2.0
    mutable: list[str] = field(default_factory=lambda: ["train.py"])
    max_experiments: int | None = None  # None: run until stopped
    seed: int = 0
    sandbox: str = "auto"  # "auto": bubblewrap when it works here; "bwrap": required; "off": none
    pipeline: bool | None = None  # propose the next change while one trains; None: on for claude and command
    # Modules a training process imports before it is needed (while the previous
    # experiment is scored): the slow part of starting. [] starts processes cold.
    warm_imports: list[str] = field(default_factory=lambda: ["numpy", "torch"])
    agent_timeout: float = 1800.0  # seconds a proposal (any agent) may take; then it is cancelled (a crash)
    confirm_runs: int = 1  # a change that beats the best is run this many more times before it is kept
    remeasure_every: int = 10  # re-measure the best after this many experiments (0: never); drift guard
    drift_ratio: float = 0.2  # ...and when recent runs' tokens/s moves this much from the best's
    noise_prior: float = 0.01  # prior run-to-run noise, as a share of the baseline metric, until data outweighs it
    min_free_gb: float = 1.0  # the loop pauses before an experiment when less disk is free in the run directory
    max_failures_in_a_row: int = 5  # experiments that crash, time out, hang, run out of memory or NaN: then pause
    workers: int | None = None  # experiments at once; None: one per visible GPU, 1 on a CPU (engine/lanes.py)
    # Two lanes per device taking turns to train: while one experiment is scored, decided and
    # the next proposed, the other trains, so the device never waits for scoring (engine/lanes.py).
    overlap: bool = False
    # Run every experiment's training and scoring on a Ray cluster (engine/remote.py): "auto" (the
    # cluster this machine belongs to) or the head's address, like "10.0.0.5:6379". None: here.
    ray: str | None = None
    # What one experiment asks of a Ray node; with ray set and workers unset, workers = how many
    # experiments the cluster's nodes can hold at once by this measure.
    ray_resources: dict[str, float] = field(default_factory=lambda: {"GPU": 1.0})

    def effective_budget(self) -> float:
        if self.budget_seconds is not None:
            return float(self.budget_seconds)
        return 300.0 if cuda_available() else 60.0

    def effective_startup(self) -> float:
        """Wall seconds a training process may use beyond the budget (imports, compiling,
        saving): the engine ends it as ``timeout`` past budget + startup."""
        if self.startup_seconds is not None:
            return float(self.startup_seconds)
        return 90.0 if cuda_available() else 20.0

    def effective_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, len(visible_gpus())) if cuda_available() else 1

    def effective_timeout(self) -> float:
        if self.timeout_seconds is not None:
            return float(self.timeout_seconds)
        return self.effective_budget() * 1.5 + 120.0


@dataclass
class AgentConfig:
    name: str | None = None  # None: "claude" when ANTHROPIC_API_KEY is set, else "heuristic"
    model: str = DEFAULT_CLAUDE_MODEL
    max_tokens: int = 8000
    max_turns: int = 20  # tool-use round trips per proposal
    max_retries: int = 4  # per API call, with backoff and jitter
    max_failures: int = 3  # consecutive failed proposals before the loop pauses
    request_timeout: float = 120.0
    max_cost: float | None = None  # USD for the whole run; the loop pauses when reached
    command: str | None = None  # for name = "command": the agent CLI, run through the shell
    command_timeout: float = 900.0
    # For name = "command": the environment variables the agent CLI gets. None (the
    # default): the engine's whole environment. A list: only these, plus PATH, HOME,
    # LANG and TERM (and the AUTORESEARCH_* variables the engine sets).
    env: list[str] | None = None
    prices: dict[str, list[float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def effective_name(self) -> str:
        if self.name:
            return self.name
        key = os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")
        return "claude" if key else "heuristic"


AGENT_NAMES = ("heuristic", "claude", "command")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

NOTIFY_ENV = "AUTORESEARCH_NOTIFY"  # more Apprise URLs, space- or comma-separated


@dataclass
class NotifyConfig:
    """[notify]: where to send news of the run (engine/notify.py), as Apprise URLs."""

    urls: list[str] = field(default_factory=list)

    def effective_urls(self, environ: typing.Mapping[str, str] | None = None) -> list[str]:
        """The file's URLs, then those of $AUTORESEARCH_NOTIFY, each once."""
        env = os.environ if environ is None else environ
        extra = [u for u in re.split(r"[\s,]+", env.get(NOTIFY_ENV, "")) if u]
        return list(dict.fromkeys([*self.urls, *extra]))


@dataclass
class TargetConfig:
    """Another repository's experiment: what runs, what it is scored on, what must pass.

    Without a [target] table the target is this project's own workspace: train.py runs
    warm in the sandbox and prepare.py's scorer measures val_bpb from the checkpoint.
    """

    run: str = "python train.py"  # run in the sandbox, in the experiment's files, with the budget
    metric: str = "val_bpb"  # its name: a `name: value` line after `---` by default
    metric_regex: str | None = None  # or: a regular expression over the output, the value in group 1
    metric_json: str | None = None  # or: a JSON file the run writes in its scratch directory (key = metric)
    direction: str = "min"  # or "max"
    evaluate: str | None = None  # a trusted command that prints the metric; without it, it is self-reported
    guard: str | None = None  # a command that must pass (exit 0) before a change can be kept
    guard_timeout: float = 600.0


@dataclass
class Config:
    loop: LoopConfig = field(default_factory=LoopConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    target: TargetConfig | None = None  # None: this project's own workspace (train.py + prepare.py)

    def effective_pipeline(self) -> bool:
        """Pipelining pays where proposing takes time (an LLM); the heuristic is instant."""
        if self.loop.effective_workers() > 1 or self.loop.overlap:
            return False  # several lanes already propose while others train
        if self.loop.pipeline is not None:
            return self.loop.pipeline
        return self.agent.effective_name() != "heuristic"

    def to_dict(self) -> dict[str, Any]:
        """The values in force, with defaults resolved (for status --json and state.json)."""
        d = asdict(self)
        d["loop"]["budget_seconds"] = self.loop.effective_budget()
        d["loop"]["timeout_seconds"] = self.loop.effective_timeout()
        d["loop"]["startup_seconds"] = self.loop.effective_startup()
        d["agent"]["name"] = self.agent.effective_name()
        d["loop"]["pipeline"] = self.effective_pipeline()
        d["loop"]["workers"] = self.loop.effective_workers()
        d["notify"]["urls"] = [redact_url(u) for u in self.notify.effective_urls()]  # tokens stay out of state.json
        if self.target is None:
            del d["target"]
        return d

    @property
    def metric(self) -> str:
        return self.target.metric if self.target else "val_bpb"

    @property
    def direction(self) -> str:
        return self.target.direction if self.target else "min"


def _check_value(where: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type: one clear line when it does not fit."""
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} {key} must be set")
    origin = typing.get_origin(base)
    if base is bool:
        ok = isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where} {key} must be a finite number, not {value!r}")
        value = float(value) if ok else value
    elif base is int:
        if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    else:
        ok = True
    if not ok:
        want = {bool: "true or false", float: "a number", int: "a whole number", str: "a string"}.get(
            base, "a list of strings" if origin is list else "another type")
        raise ConfigError(f"{where} {key} must be {want}, not {value!r}")
    return value


def _apply(section_obj: Any, section_name: str, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section_obj))
    known = {f.name for f in fields(section_obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key [{section_name}] {key}")
        if key == "prices":
            if not isinstance(value, dict) or not all(
                isinstance(v, list) and len(v) == 4
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                        for x in v)
                for v in value.values()
            ):
                raise ConfigError(
                    f"{where}: [agent] prices must map a model to "
                    "[input, output, cache_write, cache_read] USD per million tokens"
                )
            merged = dict(section_obj.prices)
            merged.update({k: [float(x) for x in v] for k, v in value.items()})
            section_obj.prices = merged
            continue
        setattr(section_obj, key, _check_value(f"{where}: [{section_name}]", key, value, hints[key]))


def validate(config: Config) -> None:
    loop, agent = config.loop, config.agent
    if loop.decision not in ("noise", "strict"):
        raise ConfigError(f'{CONFIG_FILENAME}: [loop] decision must be "noise" or "strict", not {loop.decision!r}')
    if loop.budget_seconds is not None and loop.budget_seconds <= 0:
        raise ConfigError("budget must be a positive number of seconds")
    if loop.timeout_seconds is not None and loop.timeout_seconds <= 0:
        raise ConfigError("timeout must be a positive number of seconds")
    if loop.sandbox not in ("auto", "bwrap", "off"):
        raise ConfigError(f'{CONFIG_FILENAME}: [loop] sandbox must be "auto", "bwrap" or "off", not {loop.sandbox!r}')
    for module in loop.warm_imports:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"[loop] warm_imports must list module names, not {module[:60]!r}")
    if config.target is not None:
        _validate_target(config.target)
    if loop.agent_timeout <= 0:
        raise ConfigError("agent_timeout must be a positive number of seconds")
    if loop.confirm_runs < 0 or loop.remeasure_every < 0:
        raise ConfigError("confirm_runs and remeasure_every must not be negative")
    if loop.drift_ratio <= 0 or loop.noise_prior < 0:
        raise ConfigError("drift_ratio must be positive and noise_prior not negative")
    if loop.min_free_gb < 0:
        raise ConfigError("min_free_gb must not be negative")
    if loop.max_failures_in_a_row < 1:
        raise ConfigError("max_failures_in_a_row must be at least 1")
    if loop.startup_seconds is not None and loop.startup_seconds < 0:
        raise ConfigError("startup_seconds must not be negative")
    if loop.hang_seconds <= 0:
        raise ConfigError("hang_seconds must be positive")
    if loop.baseline_runs < 1:
        raise ConfigError("baseline_runs must be at least 1")
    if loop.max_experiments is not None and loop.max_experiments < 1:
        raise ConfigError("max_experiments must be at least 1")
    if loop.workers is not None and not 1 <= loop.workers <= 64:
        raise ConfigError("workers must be between 1 and 64")
    if not isinstance(loop.overlap, bool):
        raise ConfigError("[loop] overlap must be true or false")
    if loop.overlap and loop.ray is not None:
        raise ConfigError("[loop] overlap works on this machine's devices, not with ray: a Ray node trains "
                          "and scores each experiment in one call")
    if loop.ray is not None and (not loop.ray.strip() or any(c.isspace() for c in loop.ray)):
        raise ConfigError('[loop] ray must be "auto" or the Ray head\'s address, like "10.0.0.5:6379"')
    resources = loop.ray_resources
    if not isinstance(resources, dict) or not resources or not all(
            isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0 for k, v in resources.items()):
        raise ConfigError("[loop] ray_resources must map Ray resource names to positive amounts, "
                          "like {GPU = 1}")
    loop.ray_resources = {k: float(v) for k, v in resources.items()}
    if not loop.mutable:
        raise ConfigError("[loop] mutable must name at least one file")
    for name in loop.mutable:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            raise ConfigError(f"[loop] mutable paths must be inside the repository: {name!r}")
        if name in ("prepare.py",):
            raise ConfigError("[loop] mutable may not include prepare.py (the evaluator is immutable)")
    if agent.name is not None and agent.name not in AGENT_NAMES:
        raise ConfigError(f"unknown agent {agent.name!r}: choose one of {', '.join(AGENT_NAMES)}")
    if agent.max_cost is not None and agent.max_cost <= 0:
        raise ConfigError("max_cost must be a positive number of US dollars")
    if loop.min_delta < 0 or loop.noise_k < 0:
        raise ConfigError("min_delta and noise_k must not be negative")
    for name in ("max_tokens", "max_turns", "max_failures"):
        if getattr(agent, name) < 1:
            raise ConfigError(f"[agent] {name} must be at least 1")
    if agent.max_retries < 0:
        raise ConfigError("[agent] max_retries must not be negative")
    for name in ("request_timeout", "command_timeout"):
        if getattr(agent, name) <= 0:
            raise ConfigError(f"[agent] {name} must be a positive number of seconds")
    for var in agent.env or []:
        if not _ENV_NAME.fullmatch(var):
            raise ConfigError(f"[agent] env must list environment variable names, not {var[:60]!r}")
    _validate_notify(config.notify)


def _validate_notify(notify: NotifyConfig) -> None:
    """Every URL must be one Apprise can use: a typo is found at start-up, not at 3 a.m.
    Apprise is imported only when there is a URL to check. Errors show the scheme, never the
    rest of a URL (it often holds a token)."""
    env = [u for u in notify.effective_urls() if u not in notify.urls]
    sources = ((f"{CONFIG_FILENAME}: [notify] urls", notify.urls), (f"${NOTIFY_ENV}", env))
    for where, urls in sources:  # the cheap check first: no Apprise import for a plain typo
        for i, url in enumerate(urls, 1):
            if not looks_like_url(url):
                raise ConfigError(f"{where}: entry {i} is not a URL like ntfy://topic or json://host:port/")
    for where, urls in sources:
        for i, url in enumerate(urls, 1):
            try:
                problem = unusable_url(url)
            except ImportError as e:
                raise ConfigError(f"[notify] needs the apprise package ({e}): pip install apprise") from None
            if problem:
                raise ConfigError(f"{where}: entry {i}: {problem}")


def _validate_target(t: TargetConfig) -> None:
    where = f"{CONFIG_FILENAME}: [target]"
    if t.direction not in ("min", "max"):
        raise ConfigError(f'{where} direction must be "min" or "max", not {t.direction!r}')
    if not t.run.strip():
        raise ConfigError(f"{where} run must be a command")
    if t.metric_regex is not None and t.metric_json is not None:
        raise ConfigError(f"{where} metric_regex and metric_json: choose one way to read the metric")
    if t.metric_regex is not None:
        try:
            if re.compile(t.metric_regex).groups < 1:
                raise ConfigError(f"{where} metric_regex needs a group around the number")
        except re.error as e:
            raise ConfigError(f"{where} metric_regex is not a regular expression: {e}") from None
    if t.metric_json is not None and (Path(t.metric_json).is_absolute() or ".." in Path(t.metric_json).parts):
        raise ConfigError(f"{where} metric_json must be a path inside the run's scratch directory")
    if t.guard_timeout <= 0:
        raise ConfigError(f"{where} guard_timeout must be a positive number of seconds")


def load_config(repo: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then <repo>/autoresearch.toml, then overrides like {"loop.budget_seconds": 30}."""
    config = Config()
    path = Path(repo) / CONFIG_FILENAME
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{CONFIG_FILENAME} is malformed: {e}") from None
        for section, values in data.items():
            if section not in ("loop", "agent", "notify", "target") or not isinstance(values, dict):
                raise ConfigError(f"{CONFIG_FILENAME}: unknown section [{section}] "
                                  "(expected [loop], [agent], [notify] or [target])")
            if section == "target":
                config.target = TargetConfig()
            _apply(getattr(config, section), section, values, CONFIG_FILENAME)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        _apply(getattr(config, section), section, {key: value}, "command line")
    validate(config)
    return config
