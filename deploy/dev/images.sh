#!/usr/bin/env bash
# Builds the container images vsa's tests run, without any registry:
#
#   vsa-test/busybox:local  a rootfs holding Debian's static busybox
#   vsa-test/nginx:local    Debian's nginx binary, the libraries `ldd` lists,
#                           busybox for a shell, and an nginx.conf laid out
#                           like the official image's (http { include
#                           /etc/nginx/conf.d/*.conf; }, logs to stderr)
#
# Each is a tarred rootfs given to `docker import`. An image that already
# exists is kept (pass --force to rebuild). Needs: docker, busybox-static,
# nginx.
set -euo pipefail

force=false
[ "${1:-}" = "--force" ] && force=true

have() { docker image inspect "$1" >/dev/null 2>&1; }

busybox_bin=/bin/busybox
[ -x "$busybox_bin" ] || busybox_bin=/usr/bin/busybox
file "$busybox_bin" 2>/dev/null | grep -q "statically linked" || {
    echo "images.sh: $busybox_bin is not the static busybox (apt-get install busybox-static)" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

base_rootfs() {
    local root=$1
    mkdir -p "$root"/{bin,etc,tmp,run,var/log,var/run}
    chmod 1777 "$root/tmp"
    cp "$busybox_bin" "$root/bin/busybox"
    for app in sh ls cat echo sleep wget nc ps kill env id mkdir rm true false test; do
        ln -sf busybox "$root/bin/$app"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\n' > "$root/etc/group"
    printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
}

if $force || ! have vsa-test/busybox:local; then
    base_rootfs "$tmp/busybox"
    tar -C "$tmp/busybox" -c . | docker import \
        --change 'CMD ["/bin/sh"]' - vsa-test/busybox:local >/dev/null
    echo "images.sh: built vsa-test/busybox:local" >&2
fi

if $force || ! have vsa-test/nginx:local; then
    root=$tmp/nginx
    base_rootfs "$root"
    mkdir -p "$root"/usr/sbin "$root"/etc/nginx/conf.d "$root"/var/lib/nginx \
        "$root"/var/log/nginx "$root"/var/www/html "$root"/usr/share/nginx
    cp /usr/sbin/nginx "$root/usr/sbin/nginx"
    cp /etc/nginx/mime.types "$root/etc/nginx/mime.types"
    libs=$(ldd /usr/sbin/nginx | awk '/=>/ { print $3 } /^\t\// { print $1 }')
    nss=$(ls /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 \
        /lib/x86_64-linux-gnu/libresolv.so.2 2>/dev/null || true)
    for lib in $libs $nss; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    cat > "$root/etc/nginx/nginx.conf" <<'CONF'
user www-data;
worker_processes 1;
daemon off;
pid /run/nginx.pid;
error_log stderr notice;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    server { listen 80 default_server; return 404; }
    include /etc/nginx/conf.d/*.conf;
}
CONF
    tar -C "$root" -c . | docker import \
        --change 'CMD ["/usr/sbin/nginx"]' - vsa-test/nginx:local >/dev/null
    echo "images.sh: built vsa-test/nginx:local" >&2
fi
