#!/usr/bin/env bash
# `make install-systemd`: installs stormount for systemd and mount(8).
#   /opt/stormount                        a virtualenv with stormount (STORMOUNT_VENV)
#   /usr/local/bin/stormount              -> the venv's command, as the unit names it
#   /sbin/mount.stormount                 -> for `mount -t stormount` and fstab lines
#   /sbin/mount.fuse.stormount            -> the same, for type fuse.stormount
#   /etc/systemd/system/stormount@.service
#   /etc/stormount/example.toml.sample    a commented configuration to start from
#   /usr/local/share/doc/stormount/       the operator documentation
# DESTDIR=DIR installs under DIR instead (packaging, tests); STORMOUNT_VENV=DIR uses an
# existing virtualenv that has stormount instead of making /opt/stormount.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dest=${DESTDIR:-}
venv=${STORMOUNT_VENV:-/opt/stormount}
python=${PYTHON:-python3}

if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
    echo "install-systemd: run as root (or set DESTDIR for a staging root)" >&2
    exit 1
fi
if [ -n "$dest" ] && [ -z "${STORMOUNT_VENV:-}" ]; then
    # a virtualenv names its own path inside: it cannot be built in one place for another
    echo "install-systemd: DESTDIR needs STORMOUNT_VENV, a virtualenv with stormount" >&2
    exit 1
fi
if [ -n "${STORMOUNT_VENV:-}" ]; then
    if [ ! -x "$venv/bin/stormount" ] || [ ! -x "$venv/bin/mount.stormount" ]; then
        echo "install-systemd: $venv has no stormount installed" >&2
        exit 1
    fi
else  # a fresh install, or an upgrade to this checkout's version
    echo "installing stormount from $repo into $venv" >&2
    # a venv whose creation failed half-way has a python but no pip: make it again
    [ -x "$venv/bin/pip" ] || "$python" -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    # build from a copy, so that root leaves no build/ or egg-info in the checkout
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    cp -r pyproject.toml README.md stormount "$src/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$src"/stormount.egg-info
    # [azure]: azure-identity, so that a managed identity works on an Azure VM
    "$venv/bin/pip" install --quiet --upgrade "$src[azure]"
fi
venv=$(cd "$venv" && pwd)

install -d -m 0755 "$dest/usr/local/bin" "$dest/sbin" "$dest/etc/systemd/system" \
    "$dest/usr/local/share/doc/stormount"
install -d -m 0750 "$dest/etc/stormount"
ln -sfn "$venv/bin/stormount" "$dest/usr/local/bin/stormount"
ln -sfn "$venv/bin/mount.stormount" "$dest/sbin/mount.stormount"
ln -sfn "$venv/bin/mount.stormount" "$dest/sbin/mount.fuse.stormount"
install -m 0644 systemd/stormount@.service "$dest/etc/systemd/system/stormount@.service"
install -m 0640 systemd/example.toml "$dest/etc/stormount/example.toml.sample"
install -m 0644 README.md docs/*.md "$dest/usr/local/share/doc/stormount/"

if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed; next: write /etc/stormount/NAME.toml, then systemctl enable --now stormount@NAME" >&2
