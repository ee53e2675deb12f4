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
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v file >/dev/null 2>&1 || need+=(file)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
command -v curl >/dev/null 2>&1 || need+=(curl)
# HTTPS and SSH git remotes (tests/remotes.rs start their own instances).
[ -x /usr/sbin/fcgiwrap ] || command -v fcgiwrap >/dev/null 2>&1 || need+=(fcgiwrap)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Debian's nginx, fcgiwrap and openssh-server packages start services
        # on install; the tests run their own instances, so keep them from
        # starting (and nginx from taking port 80).
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
        rm -f /usr/sbin/policy-rc.d
    else
        echo "test.sh: missing ${need[*]}; the tests that need them will skip (run as root on Debian to install)" >&2
    fi
fi

# The nginx configuration analyzer and the TLS scanner the rendering tests
# run, from PyPI (pinned).
if ! command -v gixy >/dev/null 2>&1 || ! command -v sslyze >/dev/null 2>&1; then
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        echo "test.sh: installing gixy-ng and sslyze (PyPI)" >&2
        python3 -m pip install -q --disable-pip-version-check "gixy-ng==0.2.59" "sslyze==6.3.1" >&2 \
            || echo "test.sh: pip install failed; the tests that need gixy-ng or sslyze will say so" >&2
        # Where pip put their commands (a pyenv, a venv, ~/.local): on PATH.
        PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
        export PATH
        hash -r
    else
        echo "test.sh: no python3 pip; the tests that need gixy-ng or sslyze will skip (fail under CI=true)" >&2
    fi
fi

# The Docker tests need a running engine: start Debian's dockerd when none
# answers (as root; elsewhere they skip loudly, and fail under CI=true).
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
    echo "test.sh: starting dockerd (log: /var/log/vsa-test-dockerd.log)" >&2
    nohup dockerd >/var/log/vsa-test-dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/vsa-test-dockerd.log >&2; exit 1; }
fi
# Test images, built from local files (no registry is reachable).
if docker info >/dev/null 2>&1; then
    ./deploy/dev/images.sh
fi

exec cargo test --workspace --locked "$@"
