#!/usr/bin/env bash
# The tests' S3 endpoint: moto's S3 server in a venv of its own (.venv-s3). It cannot share .venv: its botocore
# needs python-dateutil<3 and the kubernetes client needs >=3. Idempotent, like setup.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KUBEFORGE_S3_VENV:-$root/.venv-s3}"
python="${PYTHON:-python3}"
want="moto[s3,server]==5.2.5"
stamp="$venv/.kubeforge-install-stamp"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "kubeforge: installing the tests' S3 server ($want) into $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q "$want"
echo "$want" > "$stamp"
