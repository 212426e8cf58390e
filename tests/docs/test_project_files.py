"""The files a user or packager looks for exist and agree with the package."""

from pathlib import Path

import pytest

import resnexus
from resnexus.cli import main

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"resnexus {resnexus.__version__}"


def test_license_changelog_citation_and_urls():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert project["version"] == resnexus.__version__
    assert f"version: {resnexus.__version__}" in (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert {"Homepage", "Documentation", "Repository"} <= set(project["urls"])
    assert {"mkdocs-material", "mkdocstrings-python", "mkdocs-gen-files"} <= {
        r.split(">")[0] for r in project["optional-dependencies"]["docs"]
    }
    assert "test" not in " ".join(project["dependencies"])
