#!/usr/bin/env bash
# Configures (once) and builds pkirelay in ./build (or $BUILDDIR). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
[ -f "$builddir/build.ninja" ] || meson setup "$builddir" >/dev/null
ninja -C "$builddir"
