#!/usr/bin/env bash
# Installs the system packages stormount needs, only when they are missing (idempotent).
# --runtime: only what a server running stormount needs (FUSE, and what builds pyfuse3
# and the virtualenv), not the test tools (Azurite, rsync, systemd-analyze).
set -euo pipefail

runtime=0
[ "${1:-}" = "--runtime" ] && runtime=1
python=${PYTHON:-python3}
sudo_=""
if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi

missing=()
packages=(fuse3 libfuse3-dev pkg-config gcc)
[ "$runtime" = 1 ] || packages+=(rsync git)
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# pyfuse3 compiles against Python's headers, and the venv needs ensurepip
"$python" -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
"$python" -c 'import os, sysconfig; assert os.path.exists(
    os.path.join(sysconfig.get_paths()["include"], "Python.h"))' >/dev/null 2>&1 \
    || missing+=(python3-dev)
# systemd-analyze checks the unit file in the tests (the machine need not boot systemd)
if [ "$runtime" = 0 ]; then
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$runtime" = 1 ] && exit 0

if ! command -v azurite-blob >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "installing nodejs and npm (for the Azurite emulator)" >&2
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "installing azurite" >&2
    $sudo_ npm install -g --silent azurite >/dev/null
fi
