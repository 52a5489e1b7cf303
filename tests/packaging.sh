#!/usr/bin/env bash
# Checks the Debian package that scripts/package.sh built, without installing it: its files
# (binary, unit template, man pages, completions, example configs), its control data (conffiles,
# dependencies) and its maintainer scripts, run with recording fakes of adduser, chown, chmod,
# systemctl and the rest on PATH, so nothing on this machine changes.
#
# Usage: tests/packaging.sh [DEB]   (default: the newest target/debian/concentrator_*.deb)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

deb=${1:-}
if [[ -z $deb ]]; then
    for f in target/debian/concentrator_*.deb; do
        [[ -f $f && ( -z $deb || $f -nt $deb ) ]] && deb=$f
    done
fi
if [[ -z $deb || ! -f $deb ]]; then
    echo "packaging: no .deb (run scripts/package.sh first)" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/ctr-packaging-$$.XXXXXX")
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() {
    echo "ok   $1"
    passed=$((passed + 1))
}
fail() {
    echo "FAIL $1"
    failed=$((failed + 1))
}
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}

echo "packaging: $deb"
dpkg-deb -c "$deb" | awk '{print $NF}' >"$work/files"
has_file() { grep -qxF "./$1" "$work/files"; }
for f in usr/bin/concentrator \
    'lib/systemd/system/concentrator@.service' \
    usr/share/man/man1/concentrator.1.gz \
    usr/share/man/man1/concentrator-check.1.gz \
    usr/share/man/man1/concentrator-connect.1.gz \
    usr/share/bash-completion/completions/concentrator \
    usr/share/zsh/vendor-completions/_concentrator \
    usr/share/fish/vendor_completions.d/concentrator.fish \
    etc/concentrator/server.toml.example \
    etc/concentrator/client.toml.example; do
    check "file /$f" has_file "$f"
done
# Nothing that an instance would start from: only *.example under /etc/concentrator.
check "no config an instance would read" \
    bash -c "! grep -E '^\./etc/concentrator/[^/]+\.toml$' '$work/files'"

# Control data.
dpkg-deb -e "$deb" "$work/control"
check "conffiles: the server example" grep -qxF /etc/concentrator/server.toml.example "$work/control/conffiles"
check "conffiles: the client example" grep -qxF /etc/concentrator/client.toml.example "$work/control/conffiles"
depends=$(dpkg-deb -f "$deb" Depends)
for d in iproute2 adduser; do
    check "Depends: $d" grep -qw "$d" <<<"$depends"
done
for s in postinst prerm postrm; do
    check "$s is executable" test -x "$work/control/$s"
    check "$s parses" sh -n "$work/control/$s"
done

# Files' contents.
mkdir -p "$work/root"
dpkg-deb -x "$deb" "$work/root"
unit="$work/root/lib/systemd/system/concentrator@.service"
# shellcheck disable=SC2016 # $MAINPID is the unit's, not ours
for line in 'Type=notify' \
    'ExecStart=/usr/bin/concentrator --config /etc/concentrator/%i.toml' \
    'ExecReload=/bin/kill -HUP $MAINPID' \
    'RuntimeDirectory=concentrator' \
    'User=concentrator' \
    'CapabilityBoundingSet=CAP_NET_ADMIN' \
    'AmbientCapabilities=CAP_NET_ADMIN' \
    'NoNewPrivileges=yes' \
    'ProtectSystem=strict' \
    'ProtectHome=yes' \
    'DeviceAllow=/dev/net/tun rw'; do
    check "unit: $line" grep -qxF "$line" "$unit"
done
check "unit: /proc/sys stays writable (forwarding)" bash -c "! grep -q '^ProtectKernelTunables=yes' '$unit'"
# The default control socket directory is the one RuntimeDirectory creates.
check "binary: default socket in /run/concentrator" grep -qa '/run/concentrator/' "$work/root/usr/bin/concentrator"
check "man page: concentrator(1)" bash -c "zcat '$work/root/usr/share/man/man1/concentrator.1.gz' | grep -q '^\.TH concentrator 1'"
check "man page: check names --client" bash -c "zcat '$work/root/usr/share/man/man1/concentrator-check.1.gz' | grep -q 'client'"
check "bash completion knows check" grep -q 'check' "$work/root/usr/share/bash-completion/completions/concentrator"
check "bash completion parses" bash -n "$work/root/usr/share/bash-completion/completions/concentrator"
check "zsh completion is one" grep -q '^#compdef concentrator' "$work/root/usr/share/zsh/vendor-completions/_concentrator"
check "fish completion is one" grep -q '^complete -c concentrator' "$work/root/usr/share/fish/vendor_completions.d/concentrator.fish"
check "the packaged example config is the annotated one" \
    cmp -s config/server.toml "$work/root/etc/concentrator/server.toml.example"

# The maintainer scripts, with every command they may run replaced by a recorder.
fakes="$work/fakes"
mkdir -p "$fakes"
for tool in adduser useradd deluser userdel chown chmod systemctl deb-systemd-helper \
    deb-systemd-invoke rm rmdir; do
    printf '#!/bin/sh\necho "%s $*" >>"%s/calls"\nexit 0\n' "$tool" "$work" >"$fakes/$tool"
done
# getent: the user exists when $work/user-exists does.
printf '#!/bin/sh\necho "getent $*" >>"%s/calls"\n[ -e "%s/user-exists" ]\n' "$work" "$work" >"$fakes/getent"
chmod 755 "$fakes"/*
# The scripts ask systemd whether it runs by testing /run/systemd/system: copies of them test a
# directory of ours instead, present ("with systemd") or not, whatever this machine runs.
mkdir -p "$work/systemd-running"
for s in postinst prerm postrm; do
    grep -q '/run/systemd/system' "$work/control/$s" || continue
    sed "s#/run/systemd/system#$work/systemd-running#g" "$work/control/$s" >"$work/$s.with-systemd"
    sed "s#/run/systemd/system#$work/no-systemd#g" "$work/control/$s" >"$work/$s.without-systemd"
done
# maint SCRIPT with|without ARGS...: runs the script with the fakes first on PATH, with or
# without systemd; $work/calls has what it ran.
maint() {
    local script=$1 systemd=$2
    shift 2
    : >"$work/calls"
    PATH="$fakes:$PATH" sh "$work/$script.$systemd-systemd" "$@" || {
        echo "     $script $* exited $?"
        return 1
    }
}
called() { grep -qxF "$1" "$work/calls"; }
not_called() { ! grep -q "^$1" "$work/calls"; }

for systemd in with without; do
    rm -f "$work/user-exists"
    check "postinst configure (first install, $systemd systemd) runs" maint postinst $systemd configure
    check "postinst: creates the system user" \
        called "adduser --system --group --quiet --home /nonexistent --no-create-home concentrator"
    check "postinst: /etc/concentrator owned by the user" called "chown concentrator:concentrator /etc/concentrator"
    check "postinst: /etc/concentrator mode 0700" called "chmod 0700 /etc/concentrator"
    check "postinst: no restart on first install" not_called "systemctl try-restart"
    touch "$work/user-exists"
    check "postinst configure (upgrade, $systemd systemd) runs" maint postinst $systemd configure 0.1.0-1
    check "postinst: an existing user is kept" not_called adduser
    check "postinst: ownership set again" called "chown concentrator:concentrator /etc/concentrator"
    if [[ $systemd == with ]]; then
        check "postinst: daemon-reload" called "systemctl --system daemon-reload"
        check "postinst: upgrade restarts running instances" called "systemctl try-restart concentrator@*.service"
    else
        check "postinst: no systemctl without systemd" not_called systemctl
    fi
    check "prerm remove ($systemd systemd) runs" maint prerm $systemd remove
    if [[ $systemd == with ]]; then
        check "prerm: stops the instances" called "systemctl stop concentrator@*.service"
    else
        check "prerm: no systemctl without systemd" not_called systemctl
    fi
    check "prerm upgrade runs" maint prerm $systemd upgrade 0.1.0-2
    check "prerm: an upgrade stops nothing" not_called "systemctl stop"
    for action in remove purge; do
        check "postrm $action ($systemd systemd) runs" maint postrm $systemd "$action"
        check "postrm $action: keeps the user" bash -c "! grep -qE '^(deluser|userdel)' '$work/calls'"
        check "postrm $action: deletes no file" not_called "rm "
        [[ $systemd == with ]] && check "postrm $action: daemon-reload" called "systemctl --system daemon-reload"
    done
    check "postrm purge: only an empty /etc/concentrator goes" called "rmdir /etc/concentrator"
done
if command -v shellcheck >/dev/null 2>&1; then
    check "maintainer scripts pass shellcheck" shellcheck -s sh "$work/control/postinst" \
        "$work/control/prerm" "$work/control/postrm"
fi

echo "packaging: $passed passed, $failed failed"
((failed == 0))
