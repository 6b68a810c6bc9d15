"""Small pieces: decisions, the TSV row, the lock, scope checks, git plumbing."""

from __future__ import annotations

import os
import subprocess

import pytest

from engine import gitops
from engine.commit import scope_problems
from engine.decide import decide, noise_for_decisions, parse_float, thresholds
from engine.errors import UsageError
from engine.journal import tsv_row
from engine.lock import EngineLock, holder_pid, is_locked
from engine.results import Noise, Result, Standing, estimate_baseline

from .genome import git, make_repo


def test_noise_aware_decision():
    b = estimate_baseline([1.00, 1.02])
    assert b.metric == pytest.approx(1.01) and b.noise == pytest.approx(0.014142, rel=1e-4) and b.runs == 2
    assert estimate_baseline([1.0]).noise == 0.0 and estimate_baseline([float("nan")]) is None
    kw = dict(decision="noise", min_delta=0.001, noise_k=2.0, noise=0.01, best_runs=2, confirm_runs=1)
    single, mean = thresholds("noise", 0.001, 2.0, 0.01, runs=1, best_runs=2)
    assert single == pytest.approx(2 * 0.01 * (1.5 ** 0.5)) and mean == single
    assert thresholds("noise", 0.001, 2.0, 0.01, runs=2, best_runs=2)[1] == pytest.approx(0.02)
    assert thresholds("strict", 0.5, 2, 1, runs=1, best_runs=1) == (0.0, 0.0)
    assert decide([0.99], 1.01, **kw).status == "discard"  # inside the noise
    first = decide([0.97], 1.01, **kw)
    assert first.status == "confirm" and first.delta == pytest.approx(-0.04)  # a candidate: run it again
    assert decide([0.97, 0.975], 1.01, **kw).status == "keep"
    assert decide([0.97, 1.00], 1.01, **kw).status == "discard"  # lost on confirmation
    assert decide([0.97], 1.01, **{**kw, "confirm_runs": 0}).status == "keep"
    assert decide([1.0095], 1.01, decision="strict", min_delta=0.001, noise_k=2, noise=0).status == "keep"
    assert decide([1.0095, 1.02], 1.01, decision="strict", min_delta=0.001, noise_k=2, noise=0).status == "discard"
    forced = decide([1.5], 1.01, **kw, forced=True)
    assert forced.status == "keep" and forced.forced is True
    assert decide([0.5, 0.5], 1.01, **kw, forced=True).forced is False  # it would have been kept anyway


def test_pooled_noise_grows_its_degrees_of_freedom_and_starts_from_a_prior():
    def result(n, commit, runs, status="discard", baseline=False):
        return Result(n=n, status=status, commit=commit, metric=sum(runs) / len(runs), runs=runs, baseline=baseline)

    st = Standing.of([result(1, "a", [1.00], "baseline", True), result(2, "a", [1.00], "baseline", True)])
    assert st.noise() == Noise(0.0, 1, 2)  # two baseline runs that happen to agree...
    assert noise_for_decisions(st.noise(), prior_sigma=0.02) == pytest.approx(0.02 * (3 / 4) ** 0.5)  # ...are not trusted alone
    st.add(result(3, "b", [0.95, 0.97], "discard"))  # a candidate that failed its confirmation
    st.add(result(4, "c", [0.90, 0.94], "keep"))
    noise = st.noise()
    assert noise.dof == 3 and noise.runs == 6
    assert noise.sigma == pytest.approx(((0.01 ** 2 * 2 + 0.02 ** 2 * 2) / 3) ** 0.5)
    assert st.best.metric == pytest.approx(0.92) and st.best_runs == 2
    remeasured = Result(n=5, status="baseline", commit="c", metric=0.96, baseline=True, remeasure=True)
    st.add(remeasured)
    assert st.best.n == 4 and st.best.metric == pytest.approx((0.90 + 0.94 + 0.96) / 3) and st.best_runs == 3
    assert st.noise().dof == 4
    assert noise_for_decisions(st.noise(), 0.0) == st.noise().sigma


def test_parse_float():
    assert parse_float("58.3") == 58.3 and parse_float("1234.5 MB") == 1234.5 and parse_float("1e-3") == 0.001
    assert parse_float("n/a") is None and parse_float(None) is None


def test_tsv_row_has_five_clean_columns():
    row = tsv_row(Result(n=1, commit="abcdef1234", metric=1.2345678, peak_mem_mb=2048.0, status="keep",
                         description="tabs\tand\nnewlines"))
    assert row == "abcdef1\t1.234568\t2.0\tkeep\ttabs and newlines\n"
    assert tsv_row(Result(n=2, status="crash")) == "-------\t0.000000\t0.0\tcrash\t\n"


def test_scope_check():
    assert "empty" in scope_problems([], ["train.py"])[0]
    assert scope_problems(["train.py"], ["train.py"]) == []
    problems = scope_problems(["train.py", "prepare.py", "x/new.py"], ["train.py"])
    assert "prepare.py" in problems[0] and "x/new.py" in problems[1]
    assert scope_problems(["src/a.py"], ["src/"]) == []


def test_lock_refuses_a_second_holder_and_reports_the_pid(tmp_path):
    path = tmp_path / "engine.lock"
    first = EngineLock(path, "t")
    first.acquire()
    assert is_locked(path) and holder_pid(path) == os.getpid()
    with pytest.raises(UsageError, match="already running tag 't'"):
        EngineLock(path, "t").acquire()
    first.release()
    assert not path.exists() and not is_locked(path)
    # A lock file whose process died (nobody holds the flock) is taken over.
    path.write_text("4242424\n")
    assert not is_locked(path)
    second = EngineLock(path, "t")
    second.acquire()
    assert second.took_over_pid == 4242424 and path.read_text() == f"{os.getpid()}\n"
    second.release()


def test_worktree_changes_include_untracked_files_and_reset_removes_them(tmp_path):
    repo = make_repo(tmp_path / "r")
    import git as gitpython

    wt = gitops.Worktree.open_or_create(gitpython.Repo(repo), tmp_path / "wt", "t")
    base = wt.head()
    assert wt.resolve(gitops.base_ref("t")) == base
    assert wt.change().paths == []
    (tmp_path / "wt" / "train.py").write_text("LR = 1\n")
    (tmp_path / "wt" / "sub").mkdir()
    (tmp_path / "wt" / "sub" / "new.txt").write_text("x")
    change = wt.change()
    assert sorted(change.paths) == ["sub/new.txt", "train.py"] and "+LR = 1" in change.diff
    wt.reset_to(base)
    assert wt.changed_paths() == [] and not (tmp_path / "wt" / "sub").exists()
    # Reopening finds the same worktree; the user's branch is untouched.
    assert gitops.Worktree.open_or_create(gitpython.Repo(repo), tmp_path / "wt", "t").head() == base
    assert git(repo, "branch", "--show-current") == "main"


def test_exclude_is_written_once_and_never_to_gitignore(tmp_path):
    repo = make_repo(tmp_path / "r")
    import git as gitpython

    r = gitpython.Repo(repo)
    gitops.ensure_excluded(r)
    gitops.ensure_excluded(r)
    text = (repo / ".git" / "info" / "exclude").read_text()
    assert text.count("/.autoresearch/") == 1
    assert not (repo / ".gitignore").exists()


def test_bad_tags_are_refused():
    for bad in ("", "../x", "a b", "-x", "x.lock", "a/b"):
        with pytest.raises(UsageError):
            gitops.check_tag(bad)
    assert gitops.check_tag("nov23") == "nov23"


def test_commits_work_without_a_configured_identity(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r")
    subprocess.run(["git", "config", "--unset", "user.email"], cwd=repo, check=True)
    subprocess.run(["git", "config", "--unset", "user.name"], cwd=repo, check=True)
    monkeypatch.setenv("HOME", str(tmp_path))  # no global identity either
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL", "GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.delenv(var, raising=False)
    import git as gitpython

    wt = gitops.Worktree.open_or_create(gitpython.Repo(repo), tmp_path / "wt", "t")
    (tmp_path / "wt" / "train.py").write_text("LR = 2\n")
    wt.change()
    sha = wt.commit("change LR")
    assert git(tmp_path / "wt", "log", "-1", "--format=%an", sha) == "autoresearch"
