#!/usr/bin/env python3
"""Write or check requirements.lock: the exact version of every package that kubeforge[dev] (and so [operator] and
[trainer]) resolves to, used as a pip constraints file by scripts/setup.sh, CI and both images.

    python scripts/lock.py            write it from the environment this Python runs in (after scripts/setup.sh)
    python scripts/lock.py --check    exit 1 when pyproject.toml's dependencies or constraints.txt changed since the
                                      lock was written, or a declared requirement is not met by the lock (offline)

The lock's header records a hash of pyproject.toml's dependency tables and constraints.txt, so the check needs no
network and no resolver. torch is left out: constraints.txt pins it on CPU machines and the trainer's CUDA base image
brings its own build (a lock pin would contradict that image's torch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
UNLOCKED = frozenset({"torch", "kubeforge"})
"""Never pinned by the lock: torch (see above) and the project itself."""
_HASH_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)


def _name(text: str) -> str:
    """A distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", text).lower()


def inputs_hash(root: Path = ROOT) -> str:
    """sha256 of pyproject.toml's dependencies and optional-dependencies (as parsed, so comments and layout do not
    count) and of constraints.txt's requirement lines."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    constraints = [
        line.strip()
        for line in (root / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    inputs = {
        "dependencies": project.get("dependencies", []),
        "optional": project.get("optional-dependencies", {}),
        "constraints": constraints,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def locked_versions(text: str) -> dict[str, str]:
    """{normalised name: version} of a lock's `name==version` lines."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def resolve_installed(extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """{name: version} of kubeforge's dependency closure for the extras, as installed in this environment."""
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [(Requirement(r), "") for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    done_extras: set[str] = set()
    todo_extras = list(extras)
    while todo_extras:
        extra = todo_extras.pop()
        if extra in done_extras:
            continue
        done_extras.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if _name(req.name) == "kubeforge":
                todo_extras.extend(req.extras)
            else:
                pending.append((req, ""))
    versions: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req, extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        versions[_name(req.name)] = dist.version.split("+", 1)[0]  # a local label (+cpu) is the machine's build
        for child in dist.requires or []:
            child_req = Requirement(child)
            if child_req.marker is None:
                pending.append((child_req, ""))
            else:
                pending.extend((child_req, e) for e in ("", *req.extras))
    return {name: v for name, v in sorted(versions.items()) if name not in UNLOCKED}


def write_lock() -> None:
    """Write requirements.lock from this environment."""
    versions = resolve_installed()
    header = [
        "# requirements.lock: written by `python scripts/lock.py` from an environment scripts/setup.sh installed",
        f"# (Python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform}); used as pip constraints.",
        "# torch is not here: constraints.txt pins it (the CUDA trainer image brings its own).",
        f"# inputs-sha256: {inputs_hash()}",
    ]
    LOCK.write_text("\n".join([*header, *(f"{n}=={v}" for n, v in versions.items())]) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(versions)} packages")


def check_lock(root: Path = ROOT) -> list[str]:
    """What is wrong with the lock under root (empty when it is fresh)."""
    lock = root / "requirements.lock"
    if not lock.exists():
        return ["requirements.lock is missing: run `python scripts/lock.py` in the installed environment"]
    text = lock.read_text()
    found = _HASH_LINE.search(text)
    problems = []
    if not found or found.group(1) != inputs_hash(root):
        problems.append(
            "requirements.lock is stale: pyproject.toml's dependencies or constraints.txt changed since it was written;"
            " run `bash scripts/setup.sh && .venv/bin/python scripts/lock.py`"
        )
    try:
        from packaging.requirements import Requirement
    except ImportError:  # the hash above is the check; the versions are checked where packaging is installed
        return problems
    pins = locked_versions(text)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [
        *project.get("dependencies", []),
        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra),
    ]
    for text_req in declared:
        req = Requirement(text_req)
        name = _name(req.name)
        if name in UNLOCKED:
            continue
        if name not in pins:
            problems.append(f"requirements.lock: {req.name} (pyproject.toml) is not locked")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"requirements.lock: {name}=={pins[name]} does not meet pyproject.toml's {text_req}")
    return problems


def main() -> int:
    """Write the lock, or with --check report what is wrong with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if requirements.lock is stale (offline)")
    args = parser.parse_args()
    if not args.check:
        write_lock()
        return 0
    problems = check_lock()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
