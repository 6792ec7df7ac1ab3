#!/usr/bin/env bash
# Runs README's first command, `cargo run --release -p coordinator-cli -- demo`,
# in a bare Debian 12 root: what a new machine of this project's kind has and
# nothing more. That root holds:
#
# * `debootstrap --variant=minbase` with only gcc, g++, make, perl, python3,
#   pkg-config and the OpenSSL and zlib headers (no cmake, no curl headers);
# * this machine's Rust toolchain, bound in read-only;
# * an empty cargo home, so every crate is fetched again;
# * this machine's trusted certificate authorities, copied in (registry
#   traffic here passes through a TLS proxy);
# * a clone of this checkout's HEAD.
#
#   scripts/bare-machine-demo.sh            # prints the demo, then "bare machine: demo ok"
#
# Needs root and debootstrap (Debian's package). The root is kept in
# $BARE_ROOT (default /var/tmp/coordinator-bare-root) for the next run;
# delete it to start from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${BARE_ROOT:-/var/tmp/coordinator-bare-root}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)

if [ ! -x "$root/usr/bin/gcc" ]; then
    echo "== debootstrap into $root"
    debootstrap --variant=minbase \
        --include=gcc,g++,make,perl,python3,pkg-config,libssl-dev,zlib1g-dev,ca-certificates \
        bookworm "$root" "$mirror"
fi
for absent in cmake curl; do
    if chroot "$root" sh -c "command -v $absent" >/dev/null 2>&1; then
        echo "the bare root has $absent: it is not bare" >&2
        exit 1
    fi
done
if [ -e "$root/usr/include/x86_64-linux-gnu/curl/curl.h" ] || [ -e "$root/usr/include/curl/curl.h" ]; then
    echo "the bare root has curl's headers: it is not bare" >&2
    exit 1
fi

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { # bind SOURCE TARGET [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounts+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
bind /proc "$root/proc"
bind /dev "$root/dev"
bind /sys "$root/sys"
bind "$rustup_home" "$root/opt/rustup" ro

cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
rm -rf "$root/src" "$root/root/cargo-home"
git clone -q . "$root/src"
mkdir -p "$root/root/cargo-home"

echo "== in the bare root: cargo run --release -p coordinator-cli -- demo"
chroot "$root" /usr/bin/env -i \
    HOME=/root \
    PATH="/opt/rustup/toolchains/$toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    RUSTUP_HOME=/opt/rustup \
    CARGO_HOME=/root/cargo-home \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
    /bin/sh -c 'cd /src && cargo run --release -p coordinator-cli -- demo'
echo "bare machine: demo ok"
