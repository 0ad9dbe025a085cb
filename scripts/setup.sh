#!/usr/bin/env bash
# Install kubeforge and its test tools into .venv. The one install script: the README's commands and CI use it.
# Idempotent: it reinstalls only when pyproject.toml, constraints.txt or requirements.lock changed since the last install.
# It installs kubeforge[dev] (the operator's and the trainer's dependencies and the test tools) at the versions
# requirements.lock pins; while the lock is stale (pyproject.toml changed since), it says so and installs unlocked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KUBEFORGE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.kubeforge-install-stamp"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" "$root/requirements.lock" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "kubeforge: installing into $venv (first run takes a few minutes)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# PIP_CONSTRAINT also reaches build environments (deepspeed builds from source), so no step can pull CUDA torch.
export PIP_CONSTRAINT="$root/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
if "$python" "$root/scripts/lock.py" --check; then
  # pip splits PIP_CONSTRAINT on spaces: the torch pin and the lock both apply.
  PIP_CONSTRAINT="$root/constraints.txt $root/requirements.lock"
else
  echo "kubeforge: installing without the lock (refresh it after this install: .venv/bin/python scripts/lock.py)" >&2
fi
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first, from the pinned (CPU on CPU machines) build: deepspeed's build imports it.
"$venv/bin/python" -m pip install -q "torch==$(sed -n 's/^torch==//p' "$root/constraints.txt")"
"$venv/bin/python" -m pip install -q -e "$root[dev]"
# The data step's numba kernels, compiled once into their on-disk cache here rather than by the first run's workers.
"$venv/bin/python" -c "from kubeforge_trainer.data import stages; stages.compile_kernels()"
echo "$want" > "$stamp"
