#!/usr/bin/env bash
# The system packages the search tests use: PostgreSQL (a throwaway cluster for the two-worker
# study test, scripts/throwaway_postgres.py) and Chromium with its driver (the HTML report
# rendered headless through selenium). Debian/Ubuntu; installs only what is missing, so it
# can run before every CI job. Needs root (or sudo).
set -euo pipefail

missing=()
pg_bin() { ls /usr/lib/postgresql/*/bin/"$1" >/dev/null 2>&1 || command -v "$1" >/dev/null 2>&1; }
pg_bin initdb && pg_bin pg_ctl || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
    echo "search services: postgresql, chromium and chromium-driver are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "search services: ${missing[*]} missing and not root (no sudo); install them" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "search services: installing ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
