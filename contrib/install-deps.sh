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
# The mail tests' peers (tests/integration/mail_peers.py): Dovecot (run from a generated
# configuration; the packaged service is not used), an aiosmtpd SMTP server, swaks as the user.
apt-get install -y -qq --no-install-recommends dovecot-imapd python3-aiosmtpd swaks >/dev/null
echo "pkirelay: build and test dependencies installed"
