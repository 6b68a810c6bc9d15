"""The dependency direction is a checked contract: engine never imports the monitor."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_prepare_imports_neither_engine_nor_textual():
    source = (ROOT / "prepare.py").read_text()
    for banned in ("import textual", "from textual", "import engine", "from engine", "import tui", "from tui"):
        assert banned not in source


def test_importing_engine_does_not_load_textual_or_torch():
    code = (
        "import sys, engine.config, engine.rundir, engine.control, engine.agents;"
        "import importlib, pkgutil, engine;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(engine.__path__, 'engine.')];"
        "bad=[m for m in ('textual','torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_is_on_the_readme_map_and_in_the_architecture_doc():
    """A newcomer finds every file from the README's map and docs/architecture.md's tables."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## For contributors", 1)[1].split("```", 2)[1]
    arch = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for package in ("engine", "engine/agents", "tui", "autoresearch"):
        for path in sorted((ROOT / package).glob("*.py")):
            name, parent = path.name, package.rsplit("/", 1)[-1]
            if name == "__init__.py" and package != "engine/agents":
                continue  # a package marker (engine/agents/__init__.py holds make_agent)
            if name not in block:
                missing.append(f"README map: {package}/{name}")
            if f"`{name}`" not in arch and f"`{parent}/{name}`" not in arch:
                missing.append(f"docs/architecture.md: {package}/{name}")
    assert not missing, missing
