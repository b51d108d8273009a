"""The package version, whose single source is pyproject.toml's [project] version.

A source checkout (the package imported from the repository, installed in editable mode or
not) reads pyproject.toml itself, so a bumped version shows before any reinstall; an
installed copy has no pyproject.toml beside it and reads the version its installer recorded
(importlib.metadata). Neither: "0+unknown" (a PEP 440 local version that sorts below every
release).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DISTRIBUTION = "rnn_fused"
UNKNOWN = "0+unknown"
_SOURCE_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _from_pyproject(path: Path) -> str | None:
    """[project] version of the pyproject.toml at `path` when it describes this distribution."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        return None
    try:
        with path.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return None
    return project["version"]


def package_version(pyproject: Path = _SOURCE_PYPROJECT) -> str:
    """The version of this copy of the package (see the module docstring)."""
    version = _from_pyproject(pyproject) if pyproject.is_file() else None
    if version is not None:
        return version
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


__version__ = package_version()
