#!/usr/bin/env bash
# Installs fio, rclone and s3fs (the peers) for `make bench` when they are missing
# (idempotent). Never fails the build: whatever cannot be installed is reported, and
# benchmarks/run.py then skips the figures that need it and says so in its table.
set -u

sudo_=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo_="sudo"
    else
        echo "bench: not root and no passwordless sudo; fio/rclone/s3fs not installed if missing" >&2
        exit 0
    fi
fi

missing=()
for tool in fio rclone s3fs; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bench: installing ${missing[*]}" >&2
$sudo_ apt-get update -qq >/dev/null 2>&1 || echo "bench: apt-get update failed" >&2
for pkg in "${missing[@]}"; do
    if ! DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
        echo "bench: could not install $pkg; the figures that need it are skipped" >&2
    fi
done
exit 0
