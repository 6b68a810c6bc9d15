"""The val_bpb chart's series follow the engine's notion of "best"."""

from tui.chart_pane import series


def test_running_best_is_the_baseline_mean_then_each_kept_metric():
    results = [
        {"n": 1, "status": "baseline", "metric": 2.0},
        {"n": 2, "status": "baseline", "metric": 2.2},
        {"n": 3, "status": "discard", "metric": 2.05},  # lower than the mean, but not kept
        {"n": 4, "status": "crash", "metric": None},
        {"n": 5, "status": "keep", "metric": 1.9},
        {"n": 6, "status": "keep", "metric": 1.95, "forced": True},  # a human's keep moves the best up
    ]
    s = series(results)
    assert s["x"] == [1, 2, 3, 5, 6]
    assert s["keep_x"] == [1, 2, 5, 6]
    # A step line: at each change the old value and the new one share the x.
    points = list(zip(s["best_x"], s["best_y"]))
    assert points == [(1, 2.0), (2, 2.0), (2, 2.1), (3, 2.1), (5, 2.1), (5, 1.9), (6, 1.9), (6, 1.95)]
