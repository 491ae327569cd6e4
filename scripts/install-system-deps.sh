#!/usr/bin/env bash
# Installs the system packages stormount needs, only when they are missing (idempotent).
set -euo pipefail

sudo_=""
if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi

missing=()
for pkg in fuse3 libfuse3-dev pkg-config rsync git; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v azurite-blob >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "installing nodejs and npm (for the Azurite emulator)" >&2
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "installing azurite" >&2
    $sudo_ npm install -g --silent azurite >/dev/null
fi
