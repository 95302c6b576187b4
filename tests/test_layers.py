"""The layer rules of docs/design.md §6, read from the source: nothing outside the driver
layer (`psa_core/stages/`) imports it, the CLI imports only the drivers, the settings and
the errors, and nothing in the repository points at a file outside it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "psa_core"


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports (absolute names; `from a import b` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _library_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "stages" not in p.relative_to(PACKAGE).parts]


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_outside_the_stages_imports_them(path: Path) -> None:
    if path.name == "cli.py" and path.parent == PACKAGE:
        return  # the CLI dispatches to the drivers: its own rule below
    bad = sorted(m for m in imported_modules(path) if m.startswith("psa_core.stages"))
    assert not bad, f"{path.relative_to(REPO)} imports the driver layer: {bad}"


def test_the_cli_imports_only_the_drivers_the_settings_and_the_errors() -> None:
    allowed_exact = {"psa_core", "psa_core.__version__", "psa_core.settings", "psa_core.errors"}
    ours = {m for m in imported_modules(PACKAGE / "cli.py") if m.startswith("psa_core")}
    bad = sorted(
        m
        for m in ours
        if m not in allowed_exact
        and not m.startswith(("psa_core.stages", "psa_core.errors.", "psa_core.settings."))
    )
    assert not bad, f"psa_core/cli.py imports {bad}"
    assert any(m.startswith("psa_core.stages") for m in ours)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from psa_core.stages.common import mask_files\nimport psa_core.io\n")
    assert imported_modules(sample) == {
        "psa_core.stages.common",
        "psa_core.stages.common.mask_files",
        "psa_core.io",
    }


def test_nothing_in_the_repository_points_outside_it() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".smk", ".md", ".yaml", ".rst", ".toml", ".sh", ""}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for needle in ("../shared", "/work/shared", "shared/DESIGN.md", "seeds/000_"):
            if needle in text and name != "tests/test_layers.py":
                offenders.append(f"{name}: {needle}")
        if "DESIGN.md" in text.replace("docs/design.md", "") and name != "tests/test_layers.py":
            offenders.append(f"{name}: DESIGN.md")
    assert not offenders, offenders
    assert (REPO / "docs" / "design.md").is_file()
