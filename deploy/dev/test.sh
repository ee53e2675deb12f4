#!/usr/bin/env bash
# Runs vsa's whole test suite, real services included (DESIGN §8).
#
# As root on Debian it first installs what the tests need; elsewhere the
# tests that need a missing service skip loudly (and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v git >/dev/null 2>&1 || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Debian's nginx package starts a service on install; the tests run
        # their own instances, so keep it from taking port 80.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
        rm -f /usr/sbin/policy-rc.d
    else
        echo "test.sh: missing ${need[*]}; the tests that need them will skip (run as root on Debian to install)" >&2
    fi
fi

exec cargo test --workspace --locked "$@"
