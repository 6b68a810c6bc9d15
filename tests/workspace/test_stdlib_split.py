"""The default corpus: validation text comes only from stdlib files that no training or
serving process imports (the sandbox shows them the rest of the stdlib read-only)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import prepare

from .util import ROOT

LIST_IMPORTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy, torch, prepare, train
print(json.dumps(sorted(getattr(m, "__file__", None) or "" for m in list(sys.modules.values()))))
"""


def test_no_module_that_training_or_serving_imports_is_in_validation():
    found = subprocess.run([sys.executable, "-I", "-c", LIST_IMPORTS, str(ROOT)], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    imported = {Path(f).resolve() for f in json.loads(found.stdout.splitlines()[-1]) if f}
    root = Path(sysconfig.get_paths()["stdlib"])

    # What the builder does (with the builder's own list of imports, should it need one).
    plan, rule = prepare._stdlib_plan(root)
    val = {path.resolve() for _, path, is_val in plan if is_val}
    assert val and not val & imported
    for name in ("ast.py", "locale.py", "json/decoder.py", "argparse.py"):
        assert (root / name).resolve() not in val
    hidden = set(prepare._hidden_paths([path for _, path, is_val in plan if is_val]))
    assert {str(path) for _, path, is_val in plan if is_val} <= hidden
    if rule.startswith("fallback"):  # e.g. Debian's python3 ships only a sliver of Lib/test
        return
    assert "test-suite files" in rule
    assert all(prepare._in_test_suite(rel) for rel, _, is_val in plan if is_val)
    assert sum(path.stat().st_size for path in val) >= prepare.MIN_STDLIB_VAL_BYTES


def test_without_a_test_suite_any_file_may_validate_but_never_an_imported_one(tmp_path, monkeypatch):
    fake = tmp_path / "lib"
    for i in range(40):
        (fake / f"pkg{i % 4}").mkdir(parents=True, exist_ok=True)
        (fake / f"pkg{i % 4}" / f"mod{i}.py").write_text(f"x = {i}\n" * 50)
    imported = {(fake / "pkg1" / "mod5.py").resolve(), (fake / "pkg2" / "mod6.py").resolve()}
    monkeypatch.setattr(prepare, "STDLIB_VAL_PERCENT", 100)
    plan, rule = prepare._stdlib_plan(fake, lambda: imported)
    assert rule.startswith("fallback") and "never a module imported" in rule
    val = {path.resolve() for _, path, is_val in plan if is_val}
    assert len(val) == 38 and not val & imported
