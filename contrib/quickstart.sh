#!/usr/bin/env bash
# The README's first command: install the Debian packages, build pkirelay, and run the main job,
# a full offline CMP enrollment through pkirelay against OpenSSL's CMP server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/install-deps.sh
contrib/build.sh >/dev/null
echo "pkirelay: built build/agent/pkirelay"
contrib/demo/offline-cmp-enrollment.sh build/agent/pkirelay
