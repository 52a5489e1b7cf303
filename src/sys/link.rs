//! Links, addresses, routes and forwarding, set up with the `ip` command (iproute2).

use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::error::SysError;

/// Runs `ip <args>`; on failure the error carries the command line and its stderr.
fn ip(args: &[&str]) -> Result<String, SysError> {
    run("ip", "iproute2", args, None)
}

/// Runs `program` with `args` (and `stdin` piped in when given), returning its stdout.
pub(crate) fn run(
    program: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, SysError> {
    let (command, out) = run_output(program, package, args, stdin)?;
    if !out.status.success() {
        return Err(SysError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program` like [`run`], returning its command line and whatever it did; an error only
/// when it could not be run.
fn run_output(
    program: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(String, std::process::Output), SysError> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SysError::ToolMissing { program, package },
            _ => SysError::io(format!("running `{command}`"), e),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| SysError::io(format!("writing to `{command}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SysError::io(format!("waiting for `{command}`"), e))?;
    Ok((command, out))
}

/// Sets the MTU of `dev` and brings it up, without an IPv6 link-local address: a tunnel has no
/// neighbours to discover, and with one the kernel sends router solicitations into the TUN,
/// which the far end can only drop and count (as `no_peer` on a server, `spoofed_source` for
/// a client's). Addresses added to it work all the same.
pub fn set_up(dev: &str, mtu: u32) -> Result<(), SysError> {
    // Before `up`, when the kernel would make the address. Where it cannot be set (a kernel
    // without IPv6) there is no link-local address to leave out either.
    if let Err(e) = ip(&["link", "set", "dev", dev, "addrgenmode", "none"]) {
        tracing::debug!(%dev, error = %e, "no IPv6 address generation mode to set");
    }
    ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string(), "up"]).map(drop)
}

/// Sets how many packets the kernel queues for `dev` (`txqueuelen`; for a TUN, the ring of
/// packets waiting to be read).
pub fn set_tx_queue_len(dev: &str, packets: u32) -> Result<(), SysError> {
    ip(&[
        "link",
        "set",
        "dev",
        dev,
        "txqueuelen",
        &packets.to_string(),
    ])
    .map(drop)
}

/// Adds address `addr` (with its prefix length, e.g. `10.0.0.1/24`) to `dev`. IPv6
/// addresses skip duplicate address detection so they are usable at once.
pub fn add_address(dev: &str, addr: IpNet) -> Result<(), SysError> {
    let a = addr.to_string();
    // `replace`: idempotent, so a device that kept its address does not fail the start.
    let mut args = vec!["addr", "replace", &a, "dev", dev];
    if matches!(addr, IpNet::V6(_)) {
        args.push("nodad");
    }
    ip(&args).map(drop)
}

/// Waits up to `timeout` for interface `name` to disappear; true once it is gone. A device
/// whose last queue was just closed lingers briefly (the kernel releases io_uring-registered
/// files asynchronously), and opening a multi-queue TUN of that name would attach to it.
pub fn wait_until_gone(name: &str, timeout: std::time::Duration) -> bool {
    let path = std::path::Path::new("/sys/class/net").join(name);
    let deadline = std::time::Instant::now() + timeout;
    while path.exists() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Adds a route to `dest` through `dev`.
pub fn add_route(dest: IpNet, dev: &str) -> Result<(), SysError> {
    ip(&["route", "add", &dest.trunc().to_string(), "dev", dev]).map(drop)
}

/// Deletes the route to `dest` through `dev`.
pub fn delete_route(dest: IpNet, dev: &str) -> Result<(), SysError> {
    ip(&["route", "del", &dest.trunc().to_string(), "dev", dev]).map(drop)
}

/// One change of a route through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteChange {
    /// `ip route add PREFIX dev DEV`.
    Add(IpNet),
    /// `ip route del PREFIX dev DEV`: only a route through that device.
    Delete(IpNet),
}

/// What became of one [`RouteChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Done.
    Done,
    /// An add found a route to the same prefix already there (`File exists`), from another
    /// source; it is left as it is.
    AlreadyPresent,
    /// A delete found no such route through the device (`No such process`), with `ip`'s words.
    Absent(String),
    /// Anything else, with `ip`'s words.
    Failed(String),
}

impl RouteOutcome {
    /// A few words for a log line.
    pub fn describe(&self) -> String {
        match self {
            RouteOutcome::Done => "done".into(),
            RouteOutcome::AlreadyPresent => "a route to it was already there".into(),
            RouteOutcome::Absent(why) | RouteOutcome::Failed(why) => why.clone(),
        }
    }
}

/// Applies `changes` to routes through `dev` with one `ip -force -batch -` (one process
/// however many routes: a headend with thousands of sites starts in a moment), and says what
/// became of each. An error only when `ip` could not be run at all.
pub fn change_routes(dev: &str, changes: &[RouteChange]) -> Result<Vec<RouteOutcome>, SysError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let script: String = changes
        .iter()
        .map(|c| match c {
            RouteChange::Add(p) => format!("route add {} dev {dev}\n", p.trunc()),
            RouteChange::Delete(p) => format!("route del {} dev {dev}\n", p.trunc()),
        })
        .collect();
    let (_, out) = run_output("ip", "iproute2", &["-force", "-batch", "-"], Some(&script))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(batch_outcomes(&stderr, changes.len(), out.status.success()))
}

/// The outcome of each of `n` lines of an `ip -force -batch` run from its stderr, where the
/// messages of a failed line come before `Command failed -:LINE`.
fn batch_outcomes(stderr: &str, n: usize, succeeded: bool) -> Vec<RouteOutcome> {
    let mut outcomes = vec![RouteOutcome::Done; n];
    let mut message: Vec<&str> = Vec::new();
    let mut attributed = false;
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some(number) = line.strip_prefix("Command failed -:") else {
            message.push(line);
            continue;
        };
        let why = message.join("; ");
        message.clear();
        let Some(slot) = number
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| outcomes.get_mut(i))
        else {
            continue;
        };
        attributed = true;
        *slot = if why.contains("File exists") {
            RouteOutcome::AlreadyPresent
        } else if why.contains("No such process") {
            RouteOutcome::Absent(why)
        } else {
            RouteOutcome::Failed(why)
        };
    }
    if !succeeded && !attributed {
        // `ip` failed without saying which line: nothing is known to be done.
        let why = stderr.trim().to_string();
        outcomes.fill(RouteOutcome::Failed(why));
    }
    outcomes
}

/// Where the kernel would send a packet: the answer of `ip route get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The next hop, when not directly connected.
    pub gateway: Option<IpAddr>,
    /// The outgoing interface.
    pub dev: String,
    /// The preferred source address.
    pub src: Option<IpAddr>,
}

/// Asks the kernel how it would route a packet to `dest` (`ip -j route get`).
pub fn route_get(dest: IpAddr) -> Result<RouteInfo, SysError> {
    let out = ip(&["-j", "route", "get", &dest.to_string()])?;
    parse_route_get(&out)
}

/// Parses the JSON printed by `ip -j route get`.
fn parse_route_get(text: &str) -> Result<RouteInfo, SysError> {
    /// The fields we use of one route `ip -j route get` prints.
    #[derive(serde::Deserialize)]
    struct Route {
        dev: String,
        gateway: Option<String>,
        prefsrc: Option<String>,
    }
    let bad = |detail: String| SysError::Parse {
        what: "`ip -j route get` output".into(),
        detail,
    };
    let routes: Vec<Route> =
        serde_json::from_str(text.trim()).map_err(|e| bad(format!("{e} in {text:?}")))?;
    let first = routes
        .into_iter()
        .next()
        .ok_or_else(|| bad(format!("expected a non-empty array, got {text:?}")))?;
    let addr = |key: &str, value: Option<String>| -> Result<Option<IpAddr>, SysError> {
        value
            .map(|s| s.parse().map_err(|_| bad(format!("bad {key} {s:?}"))))
            .transpose()
    };
    Ok(RouteInfo {
        gateway: addr("gateway", first.gateway)?,
        src: addr("prefsrc", first.prefsrc)?,
        dev: first.dev,
    })
}

/// The host prefix (/32 or /128) for `addr`.
fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// Adds a host route to `dest` along the path described by `info` (typically taken from
/// [`route_get`] before a default route is moved into the tunnel, so that the tunnel's own
/// packets keep their way out).
pub fn add_host_route_via(dest: IpAddr, info: &RouteInfo) -> Result<(), SysError> {
    let d = host_net(dest).to_string();
    let gw = info.gateway.map(|g| g.to_string());
    let mut args = vec!["route", "add", &d];
    if let Some(gw) = &gw {
        // `onlink`: the kernel just reached the gateway through `dev`, but it may sit outside
        // every prefix on it (a /32 host behind `default via G dev eth0 onlink`, as some
        // clouds set up), and then the route is refused without the flag.
        args.extend(["via", gw.as_str(), "onlink"]);
    }
    args.extend(["dev", info.dev.as_str()]);
    ip(&args).map(drop)
}

/// Turns IP forwarding on or off for IPv4 (`v4`, `/proc/sys/net/ipv4/ip_forward`) or IPv6
/// (`/proc/sys/net/ipv6/conf/all/forwarding`) in the caller's network namespace. Returns
/// the previous value, so it can be restored.
pub fn set_ip_forward(v4: bool, enable: bool) -> Result<bool, SysError> {
    let path = if v4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    let old =
        std::fs::read_to_string(path).map_err(|e| SysError::io(format!("reading {path}"), e))?;
    let previous = match old.trim() {
        "0" => false,
        "1" => true,
        other => {
            return Err(SysError::Parse {
                what: path.into(),
                detail: format!("expected 0 or 1, got {other:?}"),
            })
        }
    };
    std::fs::write(path, if enable { "1\n" } else { "0\n" })
        .map_err(|e| SysError::io(format!("writing {path}"), e))?;
    Ok(previous)
}

/// Routes added through this guard are deleted when it is dropped (best effort; failures
/// are logged with `tracing::warn`).
#[derive(Debug, Default)]
pub struct RouteGuard {
    routes: Vec<(IpNet, String)>,
}

impl RouteGuard {
    /// An empty guard.
    pub fn new() -> RouteGuard {
        RouteGuard::default()
    }

    /// [`add_route`], remembering the route for removal.
    pub fn add_route(&mut self, dest: IpNet, dev: &str) -> Result<(), SysError> {
        add_route(dest, dev)?;
        self.routes.push((dest, dev.to_owned()));
        Ok(())
    }

    /// [`add_host_route_via`], remembering the route for removal.
    pub fn add_host_route_via(&mut self, dest: IpAddr, info: &RouteInfo) -> Result<(), SysError> {
        add_host_route_via(dest, info)?;
        self.routes.push((host_net(dest), info.dev.clone()));
        Ok(())
    }

    /// Deletes a route added through this guard now (and forgets it); one it does not hold is
    /// left alone.
    pub fn remove_route(&mut self, dest: IpNet, dev: &str) -> Result<(), SysError> {
        let Some(at) = self.routes.iter().position(|(d, v)| *d == dest && v == dev) else {
            return Ok(());
        };
        self.routes.remove(at);
        delete_route(dest, dev)
    }

    /// The routes this guard will delete, oldest first.
    pub fn routes(&self) -> &[(IpNet, String)] {
        &self.routes
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        for (dest, dev) in self.routes.drain(..).rev() {
            if let Err(e) = delete_route(dest, &dev) {
                tracing::warn!(%dest, %dev, error = %e, "could not remove route");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testutil::{is_root_or_skip, Netns};

    #[test]
    fn route_get_loopback_parses() {
        let info = route_get("127.0.0.1".parse().unwrap()).expect("ip route get");
        assert_eq!(info.dev, "lo");
        assert_eq!(info.gateway, None);
        assert_eq!(info.src, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn parses_gateway_routes() {
        let text = r#"[{"dst":"8.8.8.8","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[],"uid":0,"cache":[]}]"#;
        let info = parse_route_get(text).unwrap();
        assert_eq!(info.gateway, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(info.dev, "eth0");
        assert_eq!(info.src, Some("192.0.2.2".parse().unwrap()));
        assert!(parse_route_get("[]").is_err());
        assert!(parse_route_get(r#"[{"gateway":"x","dev":"a"}]"#).is_err());
    }

    #[test]
    fn batch_failures_are_attributed_to_their_lines() {
        let stderr = "RTNETLINK answers: File exists\nCommand failed -:2\n\
                      Cannot find device \"nope\"\nCommand failed -:3\n\
                      RTNETLINK answers: No such process\nCommand failed -:4\n";
        let got = batch_outcomes(stderr, 4, false);
        assert_eq!(got[0], RouteOutcome::Done);
        assert_eq!(got[1], RouteOutcome::AlreadyPresent);
        assert_eq!(
            got[2],
            RouteOutcome::Failed("Cannot find device \"nope\"".into())
        );
        assert!(matches!(&got[3], RouteOutcome::Absent(w) if w.contains("No such process")));
        assert_eq!(batch_outcomes("", 2, true), vec![RouteOutcome::Done; 2]);
        // A failure nobody was blamed for: nothing is known to be done.
        assert_eq!(
            batch_outcomes("Usage: ip ...", 1, false),
            vec![RouteOutcome::Failed("Usage: ip ...".into())]
        );
    }

    #[test]
    fn route_batches_add_and_remove_only_their_own_routes() {
        if !is_root_or_skip("route_batches_add_and_remove_only_their_own_routes") {
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            ip(&["tuntap", "add", "dev", "ctr-batch0", "mode", "tun"]).unwrap();
            ip(&["link", "set", "ctr-batch0", "up"]).unwrap();
            ip(&["route", "add", "10.97.0.0/24", "dev", "lo"]).unwrap();
            let [site, site6, other]: [IpNet; 3] =
                ["10.99.0.0/24", "fd99::/48", "10.97.0.0/24"].map(|p| p.parse().unwrap());
            let got = change_routes(
                "ctr-batch0",
                &[
                    RouteChange::Add(site),
                    RouteChange::Add(site6),
                    RouteChange::Add(other),
                ],
            )
            .unwrap();
            assert_eq!(
                got,
                vec![
                    RouteOutcome::Done,
                    RouteOutcome::Done,
                    RouteOutcome::AlreadyPresent
                ]
            );
            assert!(ip(&["-6", "route", "show", "fd99::/48"])
                .unwrap()
                .contains("ctr-batch0"));
            let got = change_routes(
                "ctr-batch0",
                &[
                    RouteChange::Delete(site),
                    RouteChange::Delete(site6),
                    RouteChange::Delete(other),
                ],
            )
            .unwrap();
            assert_eq!(got[..2], [RouteOutcome::Done, RouteOutcome::Done]);
            assert!(matches!(got[2], RouteOutcome::Absent(_)), "{got:?}");
            assert_eq!(ip(&["route", "show", "10.99.0.0/24"]).unwrap(), "");
            // The route through another device stays.
            assert!(ip(&["route", "show", "10.97.0.0/24"])
                .unwrap()
                .contains("dev lo"));
        });
    }

    #[test]
    fn command_errors_carry_stderr() {
        let err = set_up("ctr-no-such-dev0", 1400).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ip link set dev ctr-no-such-dev0"), "{msg}");
        assert!(msg.to_lowercase().contains("cannot find device"), "{msg}");
    }

    #[test]
    fn host_route_via_an_onlink_gateway() {
        if !is_root_or_skip("host_route_via_an_onlink_gateway") {
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            // A /32 host whose only way out is `default via G dev eth0 onlink`: G lies outside
            // every prefix of the link.
            ip(&[
                "link",
                "add",
                "ctr-onlink0",
                "type",
                "veth",
                "peer",
                "name",
                "ctr-onlink1",
            ])
            .unwrap();
            ip(&["link", "set", "ctr-onlink1", "up"]).unwrap();
            ip(&["link", "set", "ctr-onlink0", "up"]).unwrap();
            ip(&["addr", "add", "192.0.2.11/32", "dev", "ctr-onlink0"]).unwrap();
            ip(&[
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
                "dev",
                "ctr-onlink0",
                "onlink",
            ])
            .unwrap();
            let server: IpAddr = "203.0.113.5".parse().unwrap();
            let info = route_get(server).unwrap();
            assert_eq!(info.gateway, Some("192.0.2.1".parse().unwrap()));
            let mut guard = RouteGuard::new();
            guard.add_host_route_via(server, &info).unwrap();
            let table = ip(&["route", "show", "203.0.113.5/32"]).unwrap();
            assert!(table.contains("via 192.0.2.1 dev ctr-onlink0"), "{table}");
            drop(guard);
            assert_eq!(ip(&["route", "show", "203.0.113.5/32"]).unwrap(), "");
        });
    }

    #[test]
    fn routes_and_forwarding_in_netns() {
        if !is_root_or_skip("routes_and_forwarding_in_netns") {
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            let dest: IpNet = "198.51.100.0/24".parse().unwrap();
            {
                let mut guard = RouteGuard::new();
                guard.add_route(dest, "lo").unwrap();
                let info = route_get("198.51.100.9".parse().unwrap()).unwrap();
                assert_eq!(info.dev, "lo");
                let host: IpAddr = "203.0.113.5".parse().unwrap();
                guard.add_host_route_via(host, &info).unwrap();
                assert_eq!(route_get(host).unwrap().dev, "lo");
                assert_eq!(guard.routes().len(), 2);
                let other: IpNet = "198.51.101.0/24".parse().unwrap();
                guard.add_route(other, "lo").unwrap();
                guard.remove_route(other, "lo").unwrap();
                let table = ip(&["route", "show", "table", "main"]).unwrap();
                assert!(!table.contains("198.51.101.0"), "not removed: {table}");
                assert_eq!(guard.routes().len(), 2);
                // Not held: left alone.
                guard.remove_route(other, "lo").unwrap();
            }
            let table = ip(&["route", "show", "table", "main"]).unwrap();
            assert!(
                !table.contains("198.51.100.0"),
                "route left behind: {table}"
            );
            assert!(!table.contains("203.0.113.5"), "route left behind: {table}");

            assert!(!set_ip_forward(true, true).unwrap());
            assert!(set_ip_forward(true, false).unwrap());
            let prev6 = set_ip_forward(false, true).unwrap();
            assert!(set_ip_forward(false, prev6).unwrap());
        });
    }
}
