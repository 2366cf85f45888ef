#!/usr/bin/env bash
# Builds a Debian package of dupmirror with dpkg-deb (no packaging tool to install):
#
#   /usr/bin/dupmirror                              the binary (debug info stripped)
#   /usr/share/man/man1/dupmirror*.1.gz             man pages, generated from the clap definitions
#   /usr/share/bash-completion/completions/dupmirror, zsh and fish completions (likewise)
#   /lib/systemd/system/dupmirror{,@}.{service,timer}
#   /usr/share/doc/dupmirror/{README.md,dupmirror.toml.example,copyright}
#   /etc/dupmirror/                                 where dupmirror.toml goes
#
# Usage: scripts/package.sh [BINARY]
#   BINARY  an already built dupmirror (the tests pass theirs); default: cargo build --release
# Writes dist/dupmirror_VERSION_ARCH.deb (or into $DUPMIRROR_DIST) and prints its path.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --bin dupmirror >&2)
    bin=$root/target/release/dupmirror
fi
[ -x "$bin" ] || { echo "package.sh: $bin is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
out=${DUPMIRROR_DIST:-$root/dist}
stage=$(mktemp -d)
chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -d "$stage/DEBIAN" "$stage/etc/dupmirror"
install -D -m755 "$bin" "$stage/usr/bin/dupmirror"
strip --strip-debug "$stage/usr/bin/dupmirror"

man=$stage/usr/share/man/man1
"$bin" manpages "$man"
gzip -9n "$man"/*.1

"$bin" completions bash | install -D -m644 /dev/stdin "$stage/usr/share/bash-completion/completions/dupmirror"
"$bin" completions zsh | install -D -m644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_dupmirror"
"$bin" completions fish | install -D -m644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/dupmirror.fish"

install -D -m644 -t "$stage/lib/systemd/system" "$root"/contrib/systemd/dupmirror*.service "$root"/contrib/systemd/dupmirror*.timer

doc=$stage/usr/share/doc/dupmirror
install -D -m644 "$root/README.md" "$doc/README.md"
install -D -m644 "$root/contrib/dupmirror.toml.example" "$doc/dupmirror.toml.example"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dupmirror
License: MIT OR Apache-2.0
COPYRIGHT

cat > "$stage/DEBIAN/control" <<CONTROL
Package: dupmirror
Version: $version
Architecture: $arch
Maintainer: dupmirror developers <dupmirror@localhost>
Depends: libc6, libgpgme11 (>= 1.18), libisal2 (>= 2.30), gnupg
Recommends: duplicity
Section: utils
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Description: keep hosts in exact sync with a duplicity backup repository
 dupmirror keeps a local tree equal to the latest backup in a duplicity
 repository (local, FTP, HTTP), applying only the new sets, each atomically.
 The package brings a systemd timer per mirror or for all mirrors of
 /etc/dupmirror/dupmirror.toml, Prometheus textfile metrics and hooks.
CONTROL

mkdir -p "$out"
deb=$out/dupmirror_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
