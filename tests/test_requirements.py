"""The lock files: every range of requirements*.txt pinned, inside its range, for every Python the lock covers."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"requirements.txt": "requirements.lock", "requirements-ray.txt": "requirements-ray.lock", "requirements-dev.txt": "requirements-dev.lock"}


def ranges(name: str) -> list[Requirement]:
    """The requirements of one ranges file, with those of the files it includes (``-r``)."""
    found = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found += ranges(line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def pins(name: str) -> dict[str, list[tuple[Version, Marker | None]]]:
    """Each locked package's versions, with the marker that chooses each (None: every environment)."""
    found: dict[str, list[tuple[Version, Marker | None]]] = {}
    for line in (ROOT / name).read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            pin, _, marker = line.partition(";")
            package, _, version = pin.strip().partition("==")
            found.setdefault(canonicalize_name(package), []).append((Version(version), Marker(marker) if marker.strip() else None))
    return found


@pytest.mark.parametrize("ranges_file", list(LOCKS))
def test_every_range_is_pinned_inside_it_in_the_lock(ranges_file):
    locked = pins(LOCKS[ranges_file])
    for requirement in ranges(ranges_file):
        versions = locked.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} of {ranges_file} is not in {LOCKS[ranges_file]}: run bash .ci/lock"
        for version, _ in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{LOCKS[ranges_file]} pins {requirement.name} {version}, outside {ranges_file}'s {requirement.specifier}: run bash .ci/lock"
            )


@pytest.mark.parametrize("lock", ["requirements-ray.lock", "requirements-dev.lock"])
def test_the_larger_locks_install_the_users_versions(lock):
    user, larger = pins("requirements.lock"), pins(lock)
    assert {name: user[name] for name in user} == {name: larger[name] for name in user}


def test_the_dev_lock_installs_rays_versions():
    with_ray, dev = pins("requirements-ray.lock"), pins("requirements-dev.lock")
    assert {name: with_ray[name] for name in with_ray} == {name: dev[name] for name in with_ray}


def test_the_numba_that_crashed_librosa_is_not_locked():
    for lock in LOCKS.values():
        assert all(version < Version("0.68") for version, _ in pins(lock)["numba"])


def test_this_python_gets_one_version_of_each_locked_package():
    for lock in LOCKS.values():
        for package, versions in pins(lock).items():
            chosen = [version for version, marker in versions if marker is None or marker.evaluate()]
            assert len(chosen) <= 1, f"{lock} gives this Python {package} {chosen}"
