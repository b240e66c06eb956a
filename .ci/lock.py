"""Write requirements.lock: the exact version of every package that `pip install -e '.[test,s3,ssh]'` installs,
read from this environment's own metadata (the versions the tests passed with), not resolved afresh from an index.

    python .ci/lock.py            # rewrite requirements.lock from the installed packages
    python .ci/lock.py --check    # exit 1, naming the differences, where the lock and this environment differ

Each installed version must satisfy every range that asks for it (pyproject.toml's included), else it stops.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
EXTRAS = ("test", "s3", "ssh")
ALSO = ("moto[server]",)  # the S3 tests' local server (tests/remotes.py), with Flask and flask-cors
HEADER = """\
# Exact versions of everything `pip install -e '.[test,s3,ssh]' 'moto[server]'` installs, as tested
# (Linux x86_64, Python 3.11).
# Written by `python .ci/lock.py` from the environment the tests passed in; install with
#   pip install -c requirements.lock -e '.[test]'
"""


def roots() -> list[tuple[Requirement, tuple[str, ...]]]:
    """pyproject.toml's requirements, each with the extras under which it applies ('' for none)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [(Requirement(text), ("",)) for text in project["dependencies"]]
    for extra in EXTRAS:
        found += [(Requirement(text), (extra,)) for text in project["optional-dependencies"].get(extra, [])]
    return found + [(Requirement(text), ("",)) for text in ALSO]


def applies(requirement: Requirement, extras: tuple[str, ...]) -> bool:
    return requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras)


def closure() -> dict[str, str]:
    """canonical name -> installed version, for every package the roots need (with the extras they ask for)."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [r for r in roots() if applies(*r)]
    while todo:
        requirement, _ = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement}: not installed here; install the project with its extras first")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"{requirement}: {dist.version} is installed, outside that range")
        pinned[name] = dist.version
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for text in dist.requires or []:
                needed = Requirement(text)
                if applies(needed, (extra,)):
                    todo.append((needed, (extra,)))
    return pinned


def lock_text(pinned: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pinned.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the lock with this environment")
    args = parser.parse_args()
    text = lock_text(closure())
    if not args.check:
        LOCK.write_text(text)
        print(f"{LOCK.name}: {text.count('==')} packages")
        return 0
    locked, here = set(LOCK.read_text().splitlines()), set(text.splitlines())
    for line in sorted(locked ^ here):
        print(f"{'lock only' if line in locked else 'here only'}: {line}")
    return 0 if locked == here else 1


if __name__ == "__main__":
    sys.exit(main())
