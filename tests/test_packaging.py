"""What a plain `pip install .` brings, read from the package metadata (not from the test
environment, where pytest brings pygments anyway)."""

from __future__ import annotations

import tomllib
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _runtime(requirements: list[str]) -> list[Requirement]:
    """The requirements without an extra marker: what a plain install resolves."""
    parsed = [Requirement(r) for r in requirements]
    return [r for r in parsed if r.marker is None or "extra" not in str(r.marker)]


def _extra(requirements: list[str], extra: str) -> list[Requirement]:
    parsed = [Requirement(r) for r in requirements]
    return [r for r in parsed if r.marker is not None and r.marker.evaluate({"extra": extra})]


def test_plain_install_brings_what_snakemake_report_needs() -> None:
    """pygments (Snakemake's `reports` extra) and pycocotools are runtime dependencies."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    runtime = {r.name: r for r in _runtime(declared)}
    assert "pycocotools" in runtime
    snakemake = runtime["snakemake"]
    assert "pygments" in runtime or "reports" in snakemake.extras, snakemake
    # the extra resolves to pygments in Snakemake's own metadata
    assert "pygments" in {r.name for r in _extra(requires("snakemake") or [], "reports")}


def test_the_installed_metadata_matches_the_project_file() -> None:
    """The installed package was built from this pyproject.toml (a stale install would make
    the test above vacuous for the environment that runs the workflow)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = requires("psa-pipeline") or []
    assert {str(r) for r in _runtime(installed)} == {str(Requirement(r)) for r in declared}
