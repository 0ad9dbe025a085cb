#!/usr/bin/env bash
# The playground's browser test: Debian's headless chromium and its chromedriver (Selenium drives them).
# Idempotent and quick when both are installed; needs root (apt-get) otherwise.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "kubeforge: no apt-get here; install chromium and chromedriver for the playground's browser test" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "kubeforge: installing chromium needs root (or sudo)" >&2; exit 1; }
  sudo="sudo"
fi
echo "kubeforge: installing chromium and chromium-driver (the playground's browser test)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
