"""The dependency layout: the operator process imports none of the trainer's packages, requirements.lock is fresh,
Ray's version is the chart's, and the compiled data kernels' toolchain is declared and bounded."""

from __future__ import annotations

import subprocess
import sys

import tomllib
import yaml
from conftest import CHART_DIR, REPO_ROOT
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
TRAINER = {Requirement(r).name: Requirement(r) for r in PYPROJECT["optional-dependencies"]["trainer"]}
TRAINER_PACKAGES = ("torch", "ray", "deepspeed", "numba", "llvmlite", "pyarrow", "transformers", "peft", "matplotlib")


def test_the_operator_process_imports_no_trainer_package() -> None:
    # What `kubeforge operator` imports before kopf runs: the CLI, the settings, the controller and every handler.
    script = (
        "import sys\n"
        "from kubeforge import cli, config, controller\n"
        "from kubeforge.handlers import register_all\n"
        f"loaded = sorted(m for m in {(*TRAINER_PACKAGES, 'kubeforge_trainer')!r} if m in sys.modules)\n"
        "print(','.join(loaded) or 'none')\n"
    )
    env_path = f"{REPO_ROOT / 'operator'}"  # only the operator's sources, as in its image
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip() == "none", f"the operator imports {done.stdout.strip()}"


def test_the_check_sees_a_trainer_import(tmp_path) -> None:
    """The test above can fail: a module importing pyarrow shows up in the same probe."""
    (tmp_path / "probe.py").write_text("import pyarrow\n")
    script = f"import sys, probe\nprint(','.join(m for m in {TRAINER_PACKAGES!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.strip() == "pyarrow"


def test_the_lock_is_fresh() -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    assert lock.check_lock(REPO_ROOT) == []


def test_the_lock_check_sees_a_changed_pyproject(tmp_path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    for name in ("pyproject.toml", "constraints.txt", "requirements.lock"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    text = (tmp_path / "pyproject.toml").read_text().replace('"numba>=0.60,<0.69"', '"numba>=0.99"')
    (tmp_path / "pyproject.toml").write_text(text)
    problems = lock.check_lock(tmp_path)
    assert any("stale" in p for p in problems) and any("numba" in p for p in problems)


def test_ray_is_the_charts_ray() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    (pin,) = TRAINER["ray"].specifier
    assert pin.operator == "==" and pin.version == values["trainer"]["rayVersion"]


def test_the_kernels_toolchain_is_declared_and_bounded() -> None:
    for name in ("numba", "llvmlite"):  # the data kernels import both (llvmlite.ir for intrinsics)
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in TRAINER[name].specifier), name


def test_dev_installs_both_extras() -> None:
    dev = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"]]
    assert any(r.name == "kubeforge" and r.extras == {"operator", "trainer"} for r in dev)


def test_kubeforge_run_without_the_trainer_extra_says_what_to_install(tmp_path) -> None:
    # An environment where the trainer's packages cannot be found: each name shadowed by a module that is None.
    script = (
        "import sys\n"
        "from kubeforge import cli\n"
        "for name in cli.TRAINER_PACKAGES: sys.modules[name] = None\n"
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None if name in cli.TRAINER_PACKAGES else object()\n"
        "sys.exit(cli.main(['run', 'x.yaml']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "pip install 'kubeforge[trainer]'" in done.stderr and "Traceback" not in done.stderr
