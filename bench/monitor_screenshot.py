"""Write docs/monitor.svg: the live screen on a fake run, for the README.

Reproducible: the run, the clock and the utilization readings are fixed, as in the
snapshot tests.

    python bench/monitor_screenshot.py [--out docs/monitor.svg] [--size 140x44]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tui.conftest import FixedSampler, fixed_clock  # noqa: E402
from tests.tui.fake_engine import FakeEngine, history  # noqa: E402
from tui.app import MonitorApp  # noqa: E402
from tui.log_pane import LogPane  # noqa: E402
from tui.util_pane import UtilPane  # noqa: E402

LOG = [f"step {i:05d} | loss {3.2 / (1 + i / 100):.4f} | lr 4.00e-03 | dt 102ms | tok/s 40213" for i in range(0, 400, 10)]


async def shoot(out: Path, width: int, height: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="autoresearch-shot-"))
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    engine = FakeEngine(repo, "nov23", agent={"name": "claude", "model": "claude-sonnet-5-5"}).start()
    try:
        history(engine, 24)
        engine.set_state(cost_usd=1.37)
        engine.begin(24, "raise LEARNING_RATE 0.003 -> 0.004",
                     "A slightly higher learning rate should converge faster within the fixed budget: the loss "
                     "curve of #23 was still falling steeply when time ran out.")
        engine.log(24, *LOG)
        app = MonitorApp(engine.run, clock=fixed_clock(), sampler=FixedSampler(), stats_interval=3600)
        async with app.run_test(size=(width, height)) as pilot:
            deadline = time.monotonic() + 20
            while not (len(app.view.results) == len(engine.results)
                       and app.screen.query_one(LogPane).log.line_count == len(LOG)
                       and app.screen.query_one(UtilPane).samples
                       and app.screen.query_one("#chart").plot is not None):
                if time.monotonic() > deadline:
                    raise SystemExit("the fake run did not load")
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            out.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=out.name, path=str(out.parent))
    finally:
        engine.release()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "monitor.svg"))
    parser.add_argument("--size", default="140x44")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    os.environ["TZ"] = "UTC"
    time.tzset()
    asyncio.run(shoot(Path(args.out), width, height))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
