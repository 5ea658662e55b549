"""What the package installs: its own import roots only, and every entry point loads."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points, packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "know-your-bands"


def test_only_the_projects_own_import_roots_are_installed() -> None:
    # services/ and training/ install as kyb_services and kyb_training (the links in src/): a generic
    # top-level `services` or `training` would shadow, or be shadowed by, any other project's.
    roots = sorted(name for name, owners in packages_distributions().items() if DISTRIBUTION in owners)
    assert roots == ["kyb", "kyb_services", "kyb_training"]
    for link, folder in (("kyb_services", "services"), ("kyb_training", "training")):
        assert (ROOT / "src" / link).resolve() == (ROOT / folder).resolve()


@pytest.mark.parametrize("folder", ["services", "training"])
def test_every_package_folder_imports_under_its_installed_name(folder: str) -> None:
    base = ROOT / folder
    for init in sorted(base.rglob("__init__.py")):
        relative = init.parent.relative_to(base).parts
        module = importlib.import_module(".".join((f"kyb_{folder}", *relative)))
        assert Path(module.__file__ or "").resolve() == init.resolve()


@pytest.mark.parametrize("group", ["kyb.services", "kyb.stack", "kyb.commands"])
def test_every_entry_point_loads(group: str) -> None:
    found = entry_points(group=group)
    assert found, f"no entry points in {group}"
    for entry in found:
        assert callable(entry.load()), entry.name
