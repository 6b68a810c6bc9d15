"""A tiny stand-in research repository for engine tests.

train.py sleeps briefly and writes a JSON "checkpoint" whose metric follows from its
constants; prepare.py's ``evaluate`` turns that into eval.json. Setting MODE makes a
run crash, hang, time out, produce NaN, run out of memory and so on, on purpose.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from engine.agents.base import AgentError, Proposal, ProposalContext, Usage
from tests.gitrepo import committed_repo, git  # noqa: F401  (git: the engine tests import it from here)

TRAIN_PY = '''\
"""Stand-in genome: the metric is a bowl around LR = 0.04, WIDTH = 128."""
import json, math, os, signal, subprocess, sys, time

LR = 0.01
WIDTH = 64
SLEEP = 0.02
MODE = "ok"
TOKENS = 1000
BIAS = 0.0


def main():
    ckpt = os.environ["AUTORESEARCH_CHECKPOINT"]
    with open("/proc/self/stat") as f, open("/proc/uptime") as g:  # how long ago this process started
        age = float(g.read().split()[0]) - int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    print(f"process age {age:.2f}", flush=True)
    if MODE == "leave":  # something in its scratch directory that no later experiment may see
        with open(os.path.join(os.path.dirname(ckpt), "left-behind.txt"), "w") as f:
            f.write("from an earlier experiment")
    if MODE == "look":
        print("SCRATCH " + json.dumps(sorted(os.listdir(os.path.dirname(ckpt)))), flush=True)
    print(f"budget {os.environ.get('AUTORESEARCH_TIME_BUDGET')}", flush=True)
    print("step 1 loss 3.0", flush=True)
    if MODE == "evil":  # a last line that would write the clipboard, retitle and clear the terminal
        print("\\x1b]52;c;ZXZpbA==\\x07\\x1b]0;pwned\\x07\\x1b[2Jgone \\u202eevil", flush=True)
        sys.exit(3)
    if MODE == "crash":
        raise RuntimeError("boom: the model is broken")
    if MODE == "hang":
        time.sleep(600)
    if MODE == "timeout":
        while True:
            print("still going", flush=True)
            time.sleep(0.05)
    if MODE == "nan":
        print("FAIL: loss is nan at step 2", flush=True)
        sys.exit(1)
    if MODE == "oom":
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(1)
    if MODE == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if MODE == "env":
        print("ENV " + json.dumps(dict(os.environ)), flush=True)
    if MODE == "tamper":
        with open("prepare.py", "a") as f:
            f.write("# tampered\\n")
    if MODE == "children":
        # A grandchild that would outlive a careless engine, then stay busy.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            print("working", flush=True)
            time.sleep(0.05)
    if MODE == "slow":
        for i in range(600):
            print(f"step {i}", flush=True)
            time.sleep(0.05)
    time.sleep(SLEEP)
    metric = 1.0 + abs(math.log10(LR / 0.04)) + abs(WIDTH - 128) / 1000 + BIAS
    with open(ckpt, "w") as f:
        json.dump({"metric": metric, "eval": MODE}, f)
    print("---")
    print(f"training_seconds: {SLEEP}")
    print(f"peak_mem_mb: {WIDTH * 10.0}")
    print(f"tokens_per_sec: {TOKENS}")
    print("num_steps: 1")


if __name__ == "__main__":
    main()
'''

PREPARE_PY = '''\
"""Stand-in evaluator and data preparation.

MODE "lucky" in train.py stands for a noisy measurement: its first evaluation in an
experiment scores 0.1 better than the model is, later ones score it as it is (the
scorer runs in the experiment's directory, where it counts its evaluations).
"""
import json, os, sys
from pathlib import Path


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "evaluate":
        holdout = "--holdout" in sys.argv
        if "--wait" in sys.argv and sys.stdin.readline().strip() != "go":
            return  # the engine started it early and then did not need it
        rest = [a for a in sys.argv[2:] if a not in ("--holdout", "--wait")]  # flags; the rest are pairs
        args = dict(zip(rest[0::2], rest[1::2]))
        data = json.load(open(args["--checkpoint"]))
        print("evaluating", flush=True)
        if data.get("eval") == "evalcrash":
            sys.exit("evaluation blew up")
        if data.get("eval") in ("leave", "look", "slowscore"):
            import time
            time.sleep(1.5)  # a slow evaluation, long enough to see the next run start warm (or train)
        value = float("nan") if data.get("eval") == "evalnan" else data["metric"]
        if data.get("eval") == "cheat":  # caught on its third evaluation (a re-measure of the best)
            count = Path.cwd().parent.parent / "cheat-evaluations"  # the run's directory (cwd: its experiment)
            seen = int(count.read_text()) if count.exists() else 0
            count.write_text(str(seen + 1))
            if seen >= 2:
                sys.exit("FAIL evaluate: non-causal model: its log-probabilities before 9 changed")
        if data.get("eval") == "lucky":
            count = Path("evaluations")
            seen = int(count.read_text()) if count.exists() else 0
            count.write_text(str(seen + 1))
            value -= 0.1 if seen == 0 else 0.0
        result = {"val_bpb": value}
        if holdout:
            result["holdout_bpb"] = value + 0.1
        with open(args["--out"], "w") as f:
            json.dump(result, f)
        print(f"val_bpb: {value}")
        return
    cache = Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch"))
    cache.mkdir(parents=True, exist_ok=True)
    print("preparing data 100%", flush=True)
    (cache / "manifest.json").write_text(json.dumps({"files": {}}))


if __name__ == "__main__":
    main()
'''

CONFIG = '''\
[loop]
budget_seconds = 1
timeout_seconds = {timeout}
hang_seconds = {hang}
baseline_runs = {baseline_runs}
remeasure_every = 0
warm_imports = []
'''
# (The drift guard's re-measurements would shift every scripted experiment's number;
# the tests of the drift guard turn it on. The stand-in imports no torch.)


def make_repo(path: Path, *, timeout: float = 3, hang: float = 1.0, baseline_runs: int = 2,
              train_py: str = TRAIN_PY, config: bool = True) -> Path:
    files = {"train.py": train_py, "prepare.py": PREPARE_PY, "program.md": "Lower val_bpb. Edit only train.py.\n"}
    if config:
        files["autoresearch.toml"] = CONFIG.format(timeout=timeout, hang=hang, baseline_runs=baseline_runs)
    return committed_repo(path, files)


def set_constant(source: str, name: str, value: Any) -> str:
    new, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
    assert count == 1, name
    return new


class ScriptedAgent:
    """Plays a list of steps, one per proposal. Each step is a dict:

    set: {NAME: value}     edit constants of train.py
    write: {path: text}    write files in the worktree (any path)
    append: {path: text}   add text at the end of a file in the worktree
    symlink: {path: target} replace a file in the worktree by a symbolic link
    error: message         raise AgentError (with transient: bool)
    sleep: seconds         think for a while first (for control commands)
    emit: [text, ...]      stream text
    cost: usd              usage of this proposal
    """

    name = "scripted"
    model = "script-1"

    def __init__(self, steps: list[dict[str, Any]]):
        self.steps = list(steps)
        self.contexts: list[ProposalContext] = []

    def propose(self, context: ProposalContext) -> Proposal:
        self.contexts.append(context)
        step = self.steps.pop(0) if self.steps else {"set": {"SLEEP": round(0.02 + 0.001 * context.n, 4)}}
        for chunk in step.get("emit", []):
            context.emit(chunk)
        time.sleep(step.get("sleep", 0))
        usage = Usage(input_tokens=100, output_tokens=10, cost_usd=step.get("cost", 0.0))
        if "error" in step:
            raise AgentError(step["error"], transient=step.get("transient", False), usage=usage)
        train = context.worktree / "train.py"
        for name, value in step.get("set", {}).items():
            train.write_text(set_constant(train.read_text(), name, value))
        for rel, text in step.get("write", {}).items():
            (context.worktree / rel).parent.mkdir(parents=True, exist_ok=True)
            (context.worktree / rel).write_text(text)
        for rel, text in step.get("append", {}).items():
            with open(context.worktree / rel, "a") as f:
                f.write(text)
        for rel, target in step.get("symlink", {}).items():
            (context.worktree / rel).unlink(missing_ok=True)
            (context.worktree / rel).symlink_to(target)
        desc = step.get("desc") or ", ".join(f"{k}={v}" for k, v in step.get("set", {}).items()) or "scripted edit"
        return Proposal(hypothesis=f"Because the script says so: {desc}", description=desc, usage=usage)


def main() -> int:
    """Run an engine with a scripted agent in this process: ``python -m tests.engine.genome REPO TAG STEPS``."""
    from engine.config import load_config
    from engine.loop import Engine

    repo, tag, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    engine = Engine(repo, tag, load_config(repo, overrides), ScriptedAgent(steps),
                    out=lambda line: print(line, flush=True), kill_grace=1.0, agent_retry_seconds=0.0)
    engine.install_signal_handlers()
    return engine.run()


if __name__ == "__main__":
    sys.exit(main())
