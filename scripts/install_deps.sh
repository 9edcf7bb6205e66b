#!/usr/bin/env bash
# Install the server binaries the sandbox (tests, demo) starts itself: prometheus + promtool (2.42 on
# Debian bookworm), victoria-metrics, curl, and chromium (headless, for tests/test_ui_browser.py).  Idempotent: apt runs only for missing packages.
# The Debian packages ship systemd units; the sandbox runs its own processes on 127.0.0.1, so the
# services are disabled and stopped where systemd is running.  The Python venv is not handled here.
#
#   scripts/install_deps.sh
set -euo pipefail

PACKAGES=(prometheus victoria-metrics curl chromium)

log() { echo "[install_deps] $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "not root and sudo is missing: install ${PACKAGES[*]} as root"; exit 1; }
  SUDO=(sudo)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
  ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
  log "already installed: ${PACKAGES[*]}"
fi

# The packages' services must not run: they would hold the default ports and a second TSDB.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  for unit in prometheus victoria-metrics; do
    if systemctl list-unit-files "$unit.service" >/dev/null 2>&1; then
      if ${SUDO[@]+"${SUDO[@]}"} systemctl disable --now "$unit" >/dev/null 2>&1; then
        log "disabled and stopped the $unit service"
      else
        log "could not disable $unit.service (not present?)"
      fi
    fi
  done
else
  log "systemd is not running: no services to disable"
fi

for bin in prometheus promtool victoria-metrics curl chromium; do
  command -v "$bin" >/dev/null 2>&1 || { log "ERROR: $bin still missing after install"; exit 1; }
done
log "ok: $(prometheus --version 2>&1 | head -1)"
log "ok: victoria-metrics $(dpkg-query -W -f='${Version}' victoria-metrics 2>/dev/null)"
