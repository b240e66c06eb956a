"""pyproject.toml's ranges and requirements.lock agree, and the tests run with the locked versions."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BOUNDED = ("tensorflow", "keras", "dvc", "dvclive")  # whose internals or formats vggbn relies on


def locked() -> dict[str, str]:
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines)}


def requirements() -> list[Requirement]:
    texts = PROJECT["dependencies"] + [t for extra in PROJECT["optional-dependencies"].values() for t in extra]
    return [Requirement(text) for text in texts]


def test_every_requirement_is_locked_inside_its_range():
    pins = locked()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement}: not in requirements.lock (python .ci/lock.py writes it)"
        assert requirement.specifier.contains(pins[name]), f"{requirement}: requirements.lock pins {pins[name]}"


def test_the_major_dependencies_have_an_upper_bound_on_their_minor_version():
    """(The extras name `dvc[ssh]` and `dvc[s3]` without a range: the dependencies' range applies.)"""
    bounded = {Requirement(text).name: Requirement(text) for text in PROJECT["dependencies"]}
    for name in BOUNDED:
        upper = [s for s in bounded[name].specifier if s.operator == "<"]
        assert upper and re.fullmatch(r"\d+\.\d+", upper[0].version), f"{bounded[name]}: no upper minor bound"


def test_compat_names_the_versions_pyproject_accepts():
    from vggbn import compat

    for text in PROJECT["dependencies"]:
        requirement = Requirement(text)
        shown = {"tensorflow": "TensorFlow", "keras": "Keras"}.get(requirement.name)
        if shown:
            lower = next(s.version for s in requirement.specifier if s.operator == ">=")
            assert f"{shown} {lower}" in compat.TESTED, f"{requirement}, but vggbn.compat says: {compat.TESTED}"


def test_the_installed_versions_are_the_locked_ones():
    """The README's test command installs with `-c requirements.lock`: a package installed at another version means
    the tests are not testing what the lock promises (reinstall with the README's command)."""
    differ = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"(locked, installed): {differ}"
