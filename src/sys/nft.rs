//! Source NAT for client traffic leaving the host, through nftables (`nft`).

use ipnet::IpNet;

use super::error::SysError;
use super::link::run;

/// A masquerade rule in a table of its own, `concentrator_<pid>`, removed by
/// [`Masquerade::remove`] or on drop. One per address family per process.
#[derive(Debug)]
pub struct Masquerade {
    family: &'static str,
    table: String,
    installed: bool,
}

impl Masquerade {
    /// Installs `ip saddr <subnet> oifname <egress_iface> masquerade` in a new table
    /// `concentrator_<pid>` (family `ip` or `ip6` after `subnet`) with a postrouting NAT chain,
    /// in one atomic `nft -f -` transaction. Fails if the table already exists.
    pub fn install(subnet: IpNet, egress_iface: &str) -> Result<Masquerade, SysError> {
        check_iface(egress_iface)?;
        let family = match subnet {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let table = format!("concentrator_{}", std::process::id());
        let script = format!(
            "create table {family} {table}\n\
             add chain {family} {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule {family} {table} postrouting {family} saddr {net} oifname \"{egress_iface}\" masquerade\n",
            net = subnet.trunc(),
        );
        nft(&["-f", "-"], Some(&script))?;
        Ok(Masquerade {
            family,
            table,
            installed: true,
        })
    }

    /// The table's name, `concentrator_<pid>`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Deletes the table, reporting failure (dropping does the same, best effort).
    pub fn remove(mut self) -> Result<(), SysError> {
        self.installed = false;
        self.delete()
    }

    fn delete(&self) -> Result<(), SysError> {
        nft(&["delete", "table", self.family, &self.table], None).map(drop)
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if self.installed {
            if let Err(e) = self.delete() {
                tracing::warn!(table = %self.table, error = %e, "could not remove nftables table");
            }
        }
    }
}

/// Runs `nft`, reporting a missing binary as "install nftables".
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, SysError> {
    run("nft", "nftables", args, stdin)
}

/// Interface names go into the nft script quoted: refuse anything that could escape.
fn check_iface(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SysError::InvalidArgument(format!(
            "bad egress interface name {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testutil::{is_root_or_skip, Netns};

    #[test]
    fn rejects_bad_iface() {
        let net: IpNet = "10.0.0.0/24".parse().unwrap();
        assert!(matches!(
            Masquerade::install(net, "eth0\"; flush ruleset"),
            Err(SysError::InvalidArgument(_))
        ));
    }

    #[test]
    fn missing_nft_message() {
        let msg = SysError::ToolMissing {
            program: "nft",
            package: "nftables",
        }
        .to_string();
        assert!(msg.contains("install nftables"), "{msg}");
    }

    #[test]
    fn install_and_remove_leave_tables_as_before() {
        if !is_root_or_skip("install_and_remove_leave_tables_as_before") {
            return;
        }
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED install_and_remove_leave_tables_as_before: install nftables");
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            let before = nft(&["list", "tables"], None).unwrap();
            let m4 = Masquerade::install("10.99.0.7/24".parse().unwrap(), "lo").unwrap();
            let m6 = Masquerade::install("fd00:99::/64".parse().unwrap(), "lo").unwrap();
            let during = nft(&["list", "tables"], None).unwrap();
            assert!(
                during.contains(&format!("table ip {}", m4.table())),
                "{during}"
            );
            assert!(
                during.contains(&format!("table ip6 {}", m6.table())),
                "{during}"
            );
            let rules = nft(&["list", "table", "ip", m4.table()], None).unwrap();
            assert!(
                rules.contains("ip saddr 10.99.0.0/24 oifname \"lo\" masquerade"),
                "{rules}"
            );
            // A second one of the same family clashes instead of merging.
            assert!(Masquerade::install("10.98.0.0/24".parse().unwrap(), "lo").is_err());
            m4.remove().unwrap();
            drop(m6);
            assert_eq!(nft(&["list", "tables"], None).unwrap(), before);
        });
    }
}
