#!/usr/bin/env bash
# Builds the Debian package: target/debian/concentrator_<version>-1_<arch>.deb.
#
# 1. cargo build --release (the binary);
# 2. the binary writes its shell completions and man pages from its own argument definitions
#    (`concentrator completions SHELL`, `concentrator manpages DIR`) into target/debian-assets/;
# 3. cargo deb --no-build packs them with what [package.metadata.deb] in Cargo.toml lists
#    (unit template, maintainer scripts and example configs from debian/).
#
# Installs cargo-deb first when missing (scripts/deps.sh package). Usage: scripts/package.sh
# [--no-install]
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/deps.sh package ${1:+"$1"}

# No older package to be mistaken for this one (tests/packaging.sh takes the newest).
rm -f target/debian/concentrator_*.deb
cargo build --release --locked --bin concentrator
bin="${CARGO_TARGET_DIR:-target}/release/concentrator"
assets=target/debian-assets
rm -rf "$assets"
mkdir -p "$assets/man"
"$bin" completions bash >"$assets/concentrator.bash"
"$bin" completions zsh >"$assets/_concentrator"
"$bin" completions fish >"$assets/concentrator.fish"
"$bin" manpages "$assets/man"
gzip -9n "$assets"/man/*.1

# --strip: the release profile keeps debug info (for profiling), the package need not.
cargo deb --no-build --locked --strip
