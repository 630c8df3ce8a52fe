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
    libmimetic-dev \
    catch2 openssl ca-certificates python3 scdoc \
    clang libclang-rt-14-dev >/dev/null
# systemd-analyze, systemd-sysusers and systemd-tmpfiles check contrib/'s units and entries
# (tests/integration/test_contrib.py); installing the package does not make it PID 1.
apt-get install -y -qq --no-install-recommends systemd >/dev/null
# Test peers started by the tests themselves on loopback ports: nginx terminates mutual TLS in
# front of OpenSSL's CMP server (tests/integration/test_tls_endpoints.py); Dovecot (run from a
# generated configuration), an aiosmtpd SMTP server and swaks as the user are the mail tests'
# peers (tests/integration/mail_peers.py). Debian starts an installed nginx or Dovecot as a
# service on every address: a policy-rc.d that forbids starting services is in place for the
# install, unless one is there already.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
fi
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends nginx-light \
    dovecot-imapd python3-aiosmtpd swaks >/dev/null
[ -z "$policy" ] || rm -f "$policy"
echo "pkirelay: build and test dependencies installed"
