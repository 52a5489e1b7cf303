#!/usr/bin/env bash
# The one list of what the demo, the tests, the fuzzing and the packaging need from outside this
# repository, and where each comes from on Debian/Ubuntu. quickstart.sh, test.sh, fuzz.sh and
# package.sh all go through it.
#
#   scripts/deps.sh PURPOSE [--no-install]   check; install what is missing
#   scripts/deps.sh --list PURPOSE           print "kind name source" for each entry
#   source scripts/deps.sh; deps_ensure PURPOSE [--no-install]
#
# PURPOSE is demo, tests, fuzz or package; each line of the list names every purpose it serves
# (test.sh runs fuzz.sh and package.sh, so their lines say tests too). What is missing is named
# first, then installed: Debian packages with `apt-get install -y --no-install-recommends`
# (after one `apt-get update`), Python modules with `python3 -m pip install` (with
# --break-system-packages where pip refuses otherwise), cargo subcommands with
# `cargo install --locked`. /dev/net/tun is created when missing (modprobe tun, else mknod).
# Debian packages and the device need root: not as root, it says so, names them and stops
# (pip and cargo install into the user's own directories). With --no-install nothing is
# installed: what is missing is named, with the commands that would install it, and the exit
# status is 1. DEPS_SKIP="name ..." leaves entries out (quickstart.sh --no-build: cargo).
#
# The installers are looked up on PATH, or taken from APT_GET, PYTHON and CARGO; DEPS_EUID
# stands for the effective uid and DEPS_TUN_DEVICE for /dev/net/tun (for the tests of this
# script, which substitute recording fakes).
#
# Adding a dependency: one line in DEPS_LIST below, nothing else.
#   <purposes, comma-separated> <kind> <name> <source>
#   kind cmd:   a program on PATH;  py: a module python3 imports;  cargo: a `cargo NAME` subcommand;
#        file:  a file that must exist (NAME is its absolute path)
#   source apt:PACKAGE, pip:PACKAGE, cargo:CRATE@VERSION, or rustup (not installable here)
# A cmd entry may come from a crate (cargo:CRATE@VERSION): `cargo install` puts the program in
# ~/.cargo/bin, which must be on PATH (under sudo: sudo env "PATH=$PATH" ...).

DEPS_LIST='
demo,tests,fuzz,package  cmd    cargo     rustup
demo,tests,fuzz,package  cmd    cc        apt:gcc
demo,tests               cmd    ip        apt:iproute2
demo,tests               cmd    ss        apt:iproute2
demo,tests               cmd    ping      apt:iputils-ping
demo,tests               cmd    iperf3    apt:iperf3
demo,tests               cmd    python3   apt:python3
tests                    cmd    nft       apt:nftables
tests                    cmd    sysctl    apt:procps
tests                    cmd    modprobe  apt:kmod
tests                    cmd    unshare   apt:util-linux
tests                    cmd    setpriv   apt:util-linux
tests                    cmd    promtool  apt:prometheus
tests                    py     hdrh      pip:hdrhistogram
tests,fuzz               cmd    c++       apt:g++
tests,fuzz               cargo  fuzz      cargo:cargo-fuzz@0.13.2
tests,package            cargo  deb       cargo:cargo-deb@3.8.0
tests,package            cmd    dpkg-deb  apt:dpkg
tests                    cmd    wireguard-go   apt:wireguard-go
tests                    cmd    wg             apt:wireguard-tools
tests                    cmd    boringtun-cli  cargo:boringtun-cli@0.7.1
demo,tests,fuzz,package  cmd    protoc    apt:protobuf-compiler
demo,tests,fuzz,package  file   /usr/include/google/protobuf/descriptor.proto  apt:libprotobuf-dev
tests                    cmd    etcd      apt:etcd-server
tests                    cmd    etcdctl   apt:etcd-client
tests                    cmd    openssl   apt:openssl
'

# Prints "kind name source" for every entry of PURPOSE (tests includes fuzz and package).
deps_list() {
    local purpose=$1 purposes kind name source
    while read -r purposes kind name source; do
        [[ -z $purposes || $purposes == \#* ]] && continue
        [[ ",$purposes," == *",$purpose,"* ]] && echo "$kind $name $source"
    done <<<"$DEPS_LIST"
    return 0
}

# Whether one entry is present.
deps_present() {
    local kind=$1 name=$2
    case $kind in
    # Not as root, PATH often lacks the sbin directories where nft, sysctl and modprobe live.
    cmd) command -v "$name" >/dev/null 2>&1 ||
        { ((${DEPS_EUID:-$EUID} != 0)) && [[ -x /usr/sbin/$name || -x /sbin/$name ]]; } ;;
    py) "${PYTHON:-python3}" -c "import $name" >/dev/null 2>&1 ;;
    cargo) "${CARGO:-cargo}" "$name" --version >/dev/null 2>&1 ;;
    file) [[ -e $name ]] ;;
    *) echo "deps: unknown kind $kind in DEPS_LIST" >&2; return 1 ;;
    esac
}

# What a missing entry is, for people: "ping (command; Debian package iputils-ping)".
deps_describe() {
    local kind=$1 name=$2 source=$3 what from
    case $kind in
    cmd) what="command $name" ;;
    py) what="Python module $name" ;;
    cargo) what="cargo $name" ;;
    file) what="file $name" ;;
    esac
    case $source in
    apt:*) from="Debian package ${source#apt:}" ;;
    pip:*) from="PyPI package ${source#pip:}" ;;
    cargo:*) from="crate ${source#cargo:}" ;;
    rustup) from="install Rust with rustup (https://rustup.rs); under sudo keep your PATH: sudo env \"PATH=\$PATH\" ..." ;;
    esac
    echo "$what ($from)"
}

# Checks PURPOSE's entries and installs what is missing, unless --no-install. Returns non-zero
# when something is still missing afterwards.
deps_ensure() {
    local purpose=${1:?deps_ensure: purpose (demo, tests, fuzz, package)} install=1
    [[ ${2:-} == --no-install ]] && install=0
    local euid=${DEPS_EUID:-$EUID}
    local tun=${DEPS_TUN_DEVICE:-/dev/net/tun}
    local apt_get=${APT_GET:-apt-get} python=${PYTHON:-python3} cargo=${CARGO:-cargo}
    local kind name source
    local -a missing=() apt=() pip=() crates=() manual=()
    while read -r kind name source; do
        [[ " ${DEPS_SKIP:-} " == *" $name "* ]] && continue
        deps_present "$kind" "$name" && continue
        missing+=("$(deps_describe "$kind" "$name" "$source")")
        case $source in
        apt:*) [[ " ${apt[*]} " == *" ${source#apt:} "* ]] || apt+=("${source#apt:}") ;;
        pip:*) pip+=("${source#pip:}") ;;
        cargo:*) crates+=("${source#cargo:}") ;;
        *) manual+=("$name") ;;
        esac
    done < <(deps_list "$purpose")
    # pip itself: Debian's python3 comes without it.
    if ((${#pip[@]})) && ! "$python" -m pip --version >/dev/null 2>&1; then
        [[ " ${apt[*]} " == *" python3-pip "* ]] || apt+=(python3-pip)
    fi
    local tun_missing=0
    [[ -c $tun ]] || tun_missing=1

    if ((${#missing[@]} == 0 && tun_missing == 0)); then
        return 0
    fi
    echo "deps ($purpose): missing:"
    local m
    for m in "${missing[@]}"; do echo "  - $m"; done
    ((tun_missing)) && echo "  - $tun (the TUN device node; modprobe tun, or mknod $tun c 10 200)"
    local hint=()
    ((${#apt[@]})) && hint+=("apt-get install --no-install-recommends ${apt[*]}")
    ((${#pip[@]})) && hint+=("python3 -m pip install ${pip[*]}")
    ((${#crates[@]})) && hint+=("cargo install --locked ${crates[*]}")
    local h
    if ((${#manual[@]})) || ((!install)); then
        if ((${#manual[@]})); then
            echo "deps: ${manual[*]} cannot be installed by this script: install it first (see above)" >&2
        else
            echo "deps: --no-install given, so nothing is installed." >&2
        fi
        if ((${#hint[@]})) || ((tun_missing)); then
            echo "deps: to install them yourself:" >&2
            for h in "${hint[@]}"; do echo "    $h" >&2; done
            ((tun_missing)) && echo "    modprobe tun  (as root)" >&2
        fi
        return 1
    fi
    if ((euid != 0)) && { ((${#apt[@]})) || ((tun_missing)); }; then
        echo "deps: not root, so Debian packages and $tun cannot be installed; run this again" \
            "as root (sudo), or install them yourself:" >&2
        for h in "${hint[@]}"; do echo "    $h" >&2; done
        return 1
    fi

    if ((${#apt[@]})); then
        echo "deps: installing Debian packages: ${apt[*]}"
        DEBIAN_FRONTEND=noninteractive "$apt_get" update || return 1
        DEBIAN_FRONTEND=noninteractive "$apt_get" install -y --no-install-recommends "${apt[@]}" || return 1
    fi
    local p
    for p in "${pip[@]}"; do
        echo "deps: installing the Python package $p (pip)"
        "$python" -m pip install --quiet "$p" ||
            "$python" -m pip install --quiet --break-system-packages "$p" || return 1
    done
    for p in "${crates[@]}"; do
        echo "deps: installing $p (cargo install; this compiles it and takes a few minutes)"
        "$cargo" install --locked "$p" || return 1
    done
    if ((tun_missing)); then
        echo "deps: creating $tun"
        modprobe tun 2>/dev/null || true
        if [[ ! -c $tun ]]; then
            mkdir -p "$(dirname "$tun")" && mknod "$tun" c 10 200 && chmod 0666 "$tun" || return 1
        fi
    fi

    # Whatever the installers said, check again.
    local still=()
    while read -r kind name source; do
        [[ " ${DEPS_SKIP:-} " == *" $name "* ]] && continue
        deps_present "$kind" "$name" || still+=("$(deps_describe "$kind" "$name" "$source")")
    done < <(deps_list "$purpose")
    [[ -c $tun ]] || still+=("$tun")
    if ((${#still[@]})); then
        echo "deps: still missing after installing: ${still[*]}" >&2
        return 1
    fi
    echo "deps ($purpose): everything installed"
}

# Run as a script (not sourced).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    case ${1:-} in
    --list) deps_list "${2:?usage: deps.sh --list PURPOSE}" ;;
    demo | tests | fuzz | package) deps_ensure "$@" ;;
    *)
        echo "usage: scripts/deps.sh demo|tests|fuzz|package [--no-install] | --list PURPOSE" >&2
        exit 2
        ;;
    esac
fi
