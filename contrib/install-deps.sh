#!/usr/bin/env bash
# Installs what pkirelay needs to build, test and run its demo on Debian 12, from Debian's
# packages only. Run as root (or with sudo). Safe to run again. clang and libclang-rt-14-dev (its
# libFuzzer and sanitizer runtimes) are for contrib/test-hardened.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    g++ meson ninja-build pkg-config \
    libssl-dev libcurl4-openssl-dev libsqlite3-dev \
    libtomlplusplus-dev libcli11-dev libsystemd-dev libfmt-dev libspdlog-dev nlohmann-json3-dev \
    catch2 openssl ca-certificates python3 scdoc \
    clang libclang-rt-14-dev >/dev/null
# systemd-analyze, systemd-sysusers and systemd-tmpfiles check contrib/'s units and entries
# (tests/integration/test_contrib.py); installing the package does not make it PID 1.
apt-get install -y -qq --no-install-recommends systemd >/dev/null
# nginx terminates mutual TLS in front of OpenSSL's CMP server in
# tests/integration/test_tls_endpoints.py, which starts it itself on a loopback port. Debian
# starts an installed nginx as a service on port 80 of every address: a policy-rc.d that
# forbids starting services is in place for the install, unless one is there already.
if ! command -v nginx >/dev/null; then
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy=/usr/sbin/policy-rc.d
    fi
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends nginx-light \
        >/dev/null
    [ -z "$policy" ] || rm -f "$policy"
fi
echo "pkirelay: build and test dependencies installed"
