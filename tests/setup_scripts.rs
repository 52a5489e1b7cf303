//! The dependency step of `scripts/quickstart.sh` and `scripts/test.sh` (both through
//! `scripts/deps.sh`), run with `--deps-only` on a PATH where `ping` and `iperf3` are missing
//! and every other needed program is a stand-in, while `apt-get`, `python3` (for
//! `python3 -m pip`) and `cargo` (for `cargo install`) are fakes that only record their
//! arguments and "install" by adding a stand-in. Checks that exactly the missing packages are
//! asked for, that `--no-install` and a non-root run ask for none and name them, and that each
//! purpose asks only for its own. Nothing is installed and no network is needed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DEADLINE: Duration = Duration::from_secs(60);

/// One entry of `scripts/deps.sh --list`: kind (cmd, py, cargo), name, source (apt:PKG, ...).
struct Entry {
    kind: String,
    name: String,
    source: String,
}

fn bash() -> PathBuf {
    which("bash").expect("bash on PATH")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The dependency list for `purpose`, as the script itself prints it.
fn list(purpose: &str) -> Vec<Entry> {
    let out = Command::new(bash())
        .args([&format!("{REPO}/scripts/deps.sh"), "--list", purpose])
        .output()
        .expect("running deps.sh --list");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad list line {l:?}");
            Entry {
                kind: f[0].into(),
                name: f[1].into(),
                source: f[2].into(),
            }
        })
        .collect()
}

/// A machine in a directory: `bin/` is the whole PATH, `log/` receives the fakes' records.
struct FakeMachine {
    root: PathBuf,
}

impl Drop for FakeMachine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const STAND_IN: &str = "#!/bin/sh\nexit 0\n";

impl FakeMachine {
    /// Every program of every purpose is there except `hidden`. Python modules and cargo
    /// subcommands are there unless named in FAKE_PY_MISSING or FAKE_CARGO_MISSING (see [`run`]).
    fn new(tag: &str, hidden: &[&str]) -> Self {
        let root = std::env::temp_dir().join(format!("ctr-deps-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join("bin");
        for d in [
            &bin,
            &root.join("log"),
            &root.join("py"),
            &root.join("cargo"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let entries = list("tests");
        for e in entries.iter().chain(list("demo").iter()) {
            if e.kind == "cmd"
                && !hidden.contains(&e.name.as_str())
                && !["python3", "cargo"].contains(&e.name.as_str())
            {
                write_exe(&bin.join(&e.name), STAND_IN);
            }
        }
        // What the scripts themselves run besides the installers.
        for tool in ["bash", "dirname"] {
            std::os::unix::fs::symlink(which(tool).unwrap(), bin.join(tool)).unwrap();
        }

        // Which package provides what, so that the fakes can "install" it.
        let mut apt_cmds: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut pip_modules = BTreeMap::new();
        let mut crates = BTreeMap::new();
        for e in &entries {
            if let Some(pkg) = e.source.strip_prefix("apt:") {
                if e.kind == "cmd" {
                    apt_cmds.entry(pkg.into()).or_default().push(e.name.clone());
                }
            } else if let Some(pkg) = e.source.strip_prefix("pip:") {
                pip_modules.insert(pkg.to_string(), e.name.clone());
            } else if let Some(krate) = e.source.strip_prefix("cargo:") {
                // A cargo subcommand is "there" once its marker exists; a program (boringtun-cli)
                // once its stand-in is on PATH.
                let installed = if e.kind == "cmd" {
                    format!("{}/{}", bin.display(), e.name)
                } else {
                    format!("{}/cargo/{}", root.display(), e.name)
                };
                crates.insert(krate.to_string(), installed);
            }
        }
        let log = root.join("log");
        let case = |map: &BTreeMap<String, String>, dir: &str| -> String {
            map.iter()
                .map(|(k, v)| format!("    {k}) : >\"{}/{dir}/{v}\" ;;\n", root.display()))
                .collect()
        };
        // Each crate "installs" a stand-in at its path (executable, for programs).
        let cargo_case: String = crates
            .iter()
            .map(|(k, path)| {
                format!(
                    "    {k}) printf '{}' >\"{path}\"; /bin/chmod 755 \"{path}\" ;;\n",
                    STAND_IN.escape_default()
                )
            })
            .collect();
        let apt_case: String = apt_cmds
            .iter()
            .map(|(pkg, cmds)| {
                let stubs: String = cmds
                    .iter()
                    .map(|c| {
                        format!(
                            "printf '{}' >\"{}/{c}\"; ",
                            STAND_IN.escape_default(),
                            bin.display()
                        )
                    })
                    .collect();
                let chmods: String = cmds
                    .iter()
                    .map(|c| format!("\"{}/{c}\" ", bin.display()))
                    .collect();
                format!("    {pkg}) {stubs}/bin/chmod 755 {chmods};;\n")
            })
            .collect();
        write_exe(
            &bin.join("apt-get"),
            &format!(
                "#!/bin/sh\necho \"$*\" >>\"{log}/apt-get\"\n[ \"$1\" = install ] || exit 0\n\
                 for pkg in \"$@\"; do\n  case $pkg in\n{apt_case}  esac\ndone\n",
                log = log.display()
            ),
        );
        // python3 -c 'import X' | python3 -m pip --version | python3 -m pip install [opts] PKG
        write_exe(
            &bin.join("python3"),
            &format!(
                "#!/bin/sh\nif [ \"$1\" = -c ]; then\n  m=${{2#import }}\n  \
                 case \" $FAKE_PY_MISSING \" in *\" $m \"*) [ -e \"{root}/py/$m\" ] ;; *) exit 0 ;; esac\n  \
                 exit $?\nfi\n\
                 if [ \"$1 $2 $3\" = \"-m pip install\" ]; then\n  echo \"$*\" >>\"{log}/pip\"\n  \
                 for pkg in \"$@\"; do\n    case $pkg in\n{py_case}    esac\n  done\nfi\nexit 0\n",
                root = root.display(),
                log = log.display(),
                py_case = case(&pip_modules, "py"),
            ),
        );
        // cargo SUB --version | cargo install --locked CRATE@VERSION
        write_exe(
            &bin.join("cargo"),
            &format!(
                "#!/bin/sh\nif [ \"$1\" = install ]; then\n  echo \"$*\" >>\"{log}/cargo-install\"\n  \
                 for krate in \"$@\"; do\n    case $krate in\n{cargo_case}    esac\n  done\n  exit 0\nfi\n\
                 case \" $FAKE_CARGO_MISSING \" in *\" $1 \"*) [ -e \"{root}/cargo/$1\" ] ;; *) exit 0 ;; esac\n",
                root = root.display(),
                log = log.display(),
            ),
        );
        FakeMachine { root }
    }

    /// Runs `scripts/<script> <args>` with only this machine's PATH, as uid `euid`.
    fn run(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bash());
        cmd.arg(format!("{REPO}/scripts/{script}"))
            .args(args)
            .env_clear()
            .env("PATH", self.root.join("bin"))
            .env("HOME", &self.root)
            .env("DEPS_TUN_DEVICE", "/dev/null")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running the script");
        let status = common::cmd::wait_deadline(&mut child, DEADLINE);
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let record = |name: &str| -> Vec<String> {
            std::fs::read_to_string(self.root.join("log").join(name))
                .map(|t| t.lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let run = Run {
            code: status.and_then(|s| s.code()),
            output: text,
            apt_get: record("apt-get"),
            pip: record("pip"),
            cargo_install: record("cargo-install"),
        };
        // The next run starts with nothing recorded.
        let _ = std::fs::remove_dir_all(self.root.join("log"));
        std::fs::create_dir_all(self.root.join("log")).unwrap();
        run
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    output: String,
    apt_get: Vec<String>,
    pip: Vec<String>,
    cargo_install: Vec<String>,
}

impl Run {
    #[track_caller]
    fn assert_nothing_installed(&self) {
        assert!(
            self.apt_get.is_empty() && self.pip.is_empty() && self.cargo_install.is_empty(),
            "something was installed: {self:#?}"
        );
    }

    #[track_caller]
    fn assert_names_ping_and_iperf3(&self) {
        for word in [
            "command ping",
            "iputils-ping",
            "command iperf3",
            "Debian package iperf3",
        ] {
            assert!(
                self.output.contains(word),
                "{word:?} not named:\n{}",
                self.output
            );
        }
    }
}

const HIDDEN: &[&str] = &["ping", "iperf3"];
const ROOT: (&str, &str) = ("DEPS_EUID", "0");
const APT_INSTALL_PING_IPERF3: &str = "install -y --no-install-recommends iputils-ping iperf3";

#[test]
fn demo_and_tests_install_exactly_iputils_ping_and_iperf3() {
    let m = FakeMachine::new("install", HIDDEN);
    for script in ["quickstart.sh", "test.sh"] {
        let r = m.run(script, &["--deps-only"], &[ROOT]);
        assert_eq!(r.code, Some(0), "{script}: {r:#?}");
        assert_eq!(r.apt_get, ["update", APT_INSTALL_PING_IPERF3], "{script}");
        assert!(
            r.pip.is_empty() && r.cargo_install.is_empty(),
            "{script}: {r:#?}"
        );
        r.assert_names_ping_and_iperf3();
        // Said before done.
        let said = r
            .output
            .find("installing Debian packages: iputils-ping iperf3");
        assert!(said.is_some(), "{script}: not announced:\n{}", r.output);
        // The stand-ins the fake apt-get added count as installed: hide them again.
        for tool in HIDDEN {
            std::fs::remove_file(m.root.join("bin").join(tool)).unwrap();
        }
    }
}

#[test]
fn no_install_installs_nothing_and_names_what_is_missing() {
    let m = FakeMachine::new("no-install", HIDDEN);
    for script in ["quickstart.sh", "test.sh"] {
        let r = m.run(script, &["--deps-only", "--no-install"], &[ROOT]);
        assert_eq!(r.code, Some(1), "{script}: {r:#?}");
        r.assert_nothing_installed();
        r.assert_names_ping_and_iperf3();
        assert!(
            r.output
                .contains("apt-get install --no-install-recommends iputils-ping iperf3"),
            "{script}: no install hint:\n{}",
            r.output
        );
        // The full run stops there too, before any step.
        let r = m.run(script, &["--no-install"], &[ROOT]);
        assert_eq!(r.code, Some(1), "{script}: {r:#?}");
        r.assert_nothing_installed();
        assert!(
            !r.output.contains("==> fmt"),
            "{script}: went on:\n{}",
            r.output
        );
    }
}

#[test]
fn not_root_installs_nothing_and_says_so() {
    let m = FakeMachine::new("not-root", HIDDEN);
    for script in ["quickstart.sh", "test.sh"] {
        let r = m.run(script, &["--deps-only"], &[("DEPS_EUID", "1000")]);
        assert_eq!(r.code, Some(1), "{script}: {r:#?}");
        r.assert_nothing_installed();
        r.assert_names_ping_and_iperf3();
        assert!(r.output.contains("not root"), "{script}:\n{}", r.output);
    }
}

#[test]
fn each_purpose_asks_for_its_own_python_and_cargo_packages() {
    let deb_crate = list("package")
        .into_iter()
        .find(|e| e.kind == "cargo" && e.name == "deb")
        .map(|e| e.source["cargo:".len()..].to_string())
        .expect("cargo-deb in the list");
    let m = FakeMachine::new("purposes", HIDDEN);
    let env = [
        ROOT,
        ("FAKE_PY_MISSING", "hdrh"),
        ("FAKE_CARGO_MISSING", "deb"),
    ];

    // The demo needs neither the Python reader nor cargo-deb.
    let r = m.run("quickstart.sh", &["--deps-only"], &env);
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.apt_get, ["update", APT_INSTALL_PING_IPERF3]);
    assert!(r.pip.is_empty() && r.cargo_install.is_empty(), "{r:#?}");
    for tool in HIDDEN {
        std::fs::remove_file(m.root.join("bin").join(tool)).unwrap();
    }

    // The tests need both.
    let r = m.run("test.sh", &["--deps-only"], &env);
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.apt_get, ["update", APT_INSTALL_PING_IPERF3]);
    assert_eq!(r.pip, ["-m pip install --quiet hdrhistogram"]);
    assert_eq!(r.cargo_install, [format!("install --locked {deb_crate}")]);
    for word in [
        "Python module hdrh (PyPI package hdrhistogram)",
        "cargo deb",
    ] {
        assert!(r.output.contains(word), "{word:?} not named:\n{}", r.output);
    }
}

#[test]
fn a_missing_tun_device_is_named() {
    let m = FakeMachine::new("tun", &[]);
    let missing = m.root.join("no-tun");
    let r = m.run(
        "test.sh",
        &["--deps-only", "--no-install"],
        &[ROOT, ("DEPS_TUN_DEVICE", missing.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(1), "{r:#?}");
    r.assert_nothing_installed();
    assert!(
        r.output
            .contains(&format!("{} (the TUN device node", missing.display())),
        "{}",
        r.output
    );
}

#[test]
fn nothing_missing_nothing_done() {
    let m = FakeMachine::new("complete", &[]);
    for script in ["quickstart.sh", "test.sh"] {
        let r = m.run(script, &["--deps-only"], &[ROOT]);
        assert_eq!(r.code, Some(0), "{script}: {r:#?}");
        r.assert_nothing_installed();
        assert!(!r.output.contains("missing"), "{script}:\n{}", r.output);
    }
}

#[test]
fn the_stock_wireguard_clients_are_test_dependencies() {
    let tests = list("tests");
    let find = |name: &str| {
        tests
            .iter()
            .find(|e| e.kind == "cmd" && e.name == name)
            .map(|e| e.source.clone())
            .unwrap_or_else(|| panic!("{name} not in the tests list"))
    };
    assert_eq!(find("wireguard-go"), "apt:wireguard-go");
    assert_eq!(find("wg"), "apt:wireguard-tools");
    let boringtun = find("boringtun-cli");
    let version = boringtun
        .strip_prefix("cargo:boringtun-cli@")
        .expect("boringtun-cli from its crate");
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|n| n.parse::<u32>().is_ok()),
        "boringtun-cli is pinned to an exact version: {boringtun}"
    );
    // Neither the demo nor the fuzzing needs them.
    for purpose in ["demo", "fuzz", "package"] {
        assert!(
            !list(purpose)
                .iter()
                .any(|e| ["wireguard-go", "wg", "boringtun-cli"].contains(&e.name.as_str())),
            "{purpose} lists a stock client"
        );
    }

    // Missing, they are installed: the Debian packages without recommends, the crate locked.
    let m = FakeMachine::new("stock", &["wireguard-go", "wg", "boringtun-cli"]);
    let r = m.run("test.sh", &["--deps-only"], &[ROOT]);
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(
        r.apt_get,
        [
            "update",
            "install -y --no-install-recommends wireguard-go wireguard-tools"
        ]
    );
    assert_eq!(
        r.cargo_install,
        [format!("install --locked boringtun-cli@{version}")]
    );
    assert!(r.pip.is_empty(), "{r:#?}");
    for word in [
        "command wireguard-go (Debian package wireguard-go)",
        "command wg (Debian package wireguard-tools)",
        "command boringtun-cli (crate boringtun-cli@",
    ] {
        assert!(r.output.contains(word), "{word:?} not named:\n{}", r.output);
    }
    // The demo does not ask for them.
    for tool in ["wireguard-go", "wg", "boringtun-cli"] {
        std::fs::remove_file(m.root.join("bin").join(tool)).unwrap();
    }
    let r = m.run("quickstart.sh", &["--deps-only"], &[ROOT]);
    assert_eq!(r.code, Some(0), "{r:#?}");
    r.assert_nothing_installed();
}
