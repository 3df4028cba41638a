#!/usr/bin/env bash
# The S3-compatible server the s3 backend's tests start on a local port: moto's standalone
# server (PyPI `moto[server]`), run as `python3 -m moto.server`. The tests start and stop it
# themselves; this only installs it.
set -euo pipefail
if python3 -c 'import moto.server' 2>/dev/null; then
  exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
fi
# --break-system-packages: Debian's system Python refuses pip installs without it (PEP 668);
# older pips do not know the flag, hence the retry.
python3 -m pip install -q 'moto[server]>=5.1,<6' --break-system-packages 2>/dev/null \
  || python3 -m pip install -q 'moto[server]>=5.1,<6'
python3 -c 'import moto.server' || { echo "moto is not importable after pip install" >&2; exit 1; }
