"""The val_bpb chart's series follow the engine's notion of "best" (engine.results.Standing)."""

from engine.results import Result, running_best
from tui.chart_pane import series


def test_running_best_is_the_baseline_mean_then_each_kept_metric():
    results = [
        Result(n=1, status="baseline", metric=2.0, baseline=True, commit="c1"),
        Result(n=2, status="baseline", metric=2.2, baseline=True, commit="c1"),
        Result(n=3, status="discard", metric=2.05, commit="c3"),  # lower than the mean, but not kept
        Result(n=4, status="crash", commit="c4"),
        Result(n=5, status="keep", metric=1.9, commit="c5"),
        Result(n=6, status="keep", metric=1.95, forced=True, commit="c6"),  # a human's keep moves the best up
    ]
    s = series(results)
    assert s["x"] == [1, 2, 3, 5, 6]
    assert s["keep_x"] == [1, 2, 5, 6]
    # A step line: at each change the old value and the new one share the x.
    points = list(zip(s["best_x"], s["best_y"]))
    assert points == [(1, 2.0), (2, 2.0), (2, 2.1), (3, 2.1), (5, 2.1), (5, 1.9), (6, 1.9), (6, 1.95)]
    # Each point where the line settles is the engine's running best at that experiment.
    engine = dict(running_best(results))
    settled = {x: y for x, y in points}  # the last point at each x
    assert all(settled[n] == engine[n] for n in settled)


def test_unscored_results_and_a_not_a_number_metric_are_not_plotted():
    results = [
        Result(n=0, status="baseline", metric=2.0, baseline=True, commit="c0"),
        Result(n=1, status="nan", metric=float("nan"), commit="c1"),
        Result(n=2, status="interrupted"),
    ]
    s = series(results)
    assert s["x"] == [0] and s["best_y"] == [2.0]
