#!/usr/bin/env bash
# Set up a fresh machine for m3migrate: Debian's prometheus + victoria-metrics (the sandbox's real
# servers), and a Python venv in .venv with the project and its dev tools. Idempotent and quick when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || {
    echo "python venv module missing: installing python3-venv" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends python3-venv
    "$PY" -m venv .venv
  }
fi
stamp=".venv/.m3migrate-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import m3migrate, flows, tasks, blocks, cli, sandbox; print('m3migrate', m3migrate.__version__, 'ready in .venv')"
