#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing, for the headless-browser screenshot test of
# drill's HTML reports (tests/html_reports.rs). Prints the browser's path on success.
#
# Does nothing when a Chromium is already on PATH (or named by $CHROMIUM). Needs apt-get and
# root; exits 1 with a message when it cannot install.
set -euo pipefail

find_chromium() {
    if [[ -n "${CHROMIUM:-}" && -x "${CHROMIUM}" ]]; then
        echo "${CHROMIUM}"
        return 0
    fi
    for name in chromium chromium-browser; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if find_chromium; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: Chromium is missing and apt-get is not available" >&2
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "install-chromium: Chromium is missing; run as root (or: sudo apt-get install chromium)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Quiet: a test calls this, and apt's progress would bury the test's own output.
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
find_chromium
