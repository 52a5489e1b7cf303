//! DNS servers for a link, set through systemd-resolved (`resolvectl`) or, without it,
//! `resolvconf`, and taken back when the guard drops.

use std::net::IpAddr;

use super::error::SysError;
use super::link::run;

/// A program that can give a link its DNS servers, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTool {
    /// `resolvectl` (systemd-resolved): the servers are the link's own, used for lookups while
    /// it is up.
    Resolvectl,
    /// `resolvconf` (openresolv or Debian's resolvconf): the servers go into resolv.conf under
    /// the link's name.
    Resolvconf,
}

/// One run of a program: its name, its package (for the message when it is missing), its
/// arguments and what it reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRun {
    /// The program.
    pub program: &'static str,
    /// The package that installs it.
    pub package: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its input, if any.
    pub stdin: Option<String>,
}

impl ToolRun {
    fn run(&self) -> Result<(), SysError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run(self.program, self.package, &args, self.stdin.as_deref()).map(drop)
    }
}

impl DnsTool {
    /// Every tool, in the order they are tried.
    pub const ALL: [DnsTool; 2] = [DnsTool::Resolvectl, DnsTool::Resolvconf];

    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            DnsTool::Resolvectl => "resolvectl",
            DnsTool::Resolvconf => "resolvconf",
        }
    }

    /// The command that gives `dev` the DNS servers `servers` (replacing any it had).
    pub fn set(self, dev: &str, servers: &[IpAddr]) -> ToolRun {
        match self {
            DnsTool::Resolvectl => ToolRun {
                program: "resolvectl",
                package: "systemd-resolved",
                args: ["dns", dev]
                    .into_iter()
                    .map(String::from)
                    .chain(servers.iter().map(IpAddr::to_string))
                    .collect(),
                stdin: None,
            },
            DnsTool::Resolvconf => ToolRun {
                program: "resolvconf",
                package: "openresolv or resolvconf",
                args: vec!["-a".into(), dev.into()],
                stdin: Some(
                    servers
                        .iter()
                        .map(|s| format!("nameserver {s}\n"))
                        .collect(),
                ),
            },
        }
    }

    /// The command that takes back what [`DnsTool::set`] gave `dev`.
    pub fn revert(self, dev: &str) -> ToolRun {
        match self {
            DnsTool::Resolvectl => ToolRun {
                program: "resolvectl",
                package: "systemd-resolved",
                args: vec!["revert".into(), dev.into()],
                stdin: None,
            },
            DnsTool::Resolvconf => ToolRun {
                program: "resolvconf",
                package: "openresolv or resolvconf",
                args: vec!["-d".into(), dev.into()],
                stdin: None,
            },
        }
    }
}

/// Why no tool took the DNS servers.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Neither program is installed.
    #[error(
        "neither resolvectl (systemd-resolved) nor resolvconf is installed, so the DNS servers \
         are not applied; install one, or configure them by hand"
    )]
    NoTool,
    /// The programs present failed; each with its error.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Failed(Vec<SysError>),
}

/// DNS servers set on a link; taken back on drop (best effort, failures logged).
#[derive(Debug)]
pub struct DnsGuard {
    tool: DnsTool,
    dev: String,
}

impl DnsGuard {
    /// Gives `dev` the DNS servers `servers` with the first tool present that succeeds.
    pub fn set(dev: &str, servers: &[IpAddr]) -> Result<DnsGuard, DnsError> {
        Self::set_with(&DnsTool::ALL, dev, servers, |run| run.run())
    }

    /// [`DnsGuard::set`] with the tools in `tools` and `exec` running the commands.
    fn set_with(
        tools: &[DnsTool],
        dev: &str,
        servers: &[IpAddr],
        mut exec: impl FnMut(&ToolRun) -> Result<(), SysError>,
    ) -> Result<DnsGuard, DnsError> {
        let mut failures = Vec::new();
        for &tool in tools {
            match exec(&tool.set(dev, servers)) {
                Ok(()) => {
                    return Ok(DnsGuard {
                        tool,
                        dev: dev.to_owned(),
                    })
                }
                Err(SysError::ToolMissing { .. }) => {}
                Err(e) => failures.push(e),
            }
        }
        if failures.is_empty() {
            Err(DnsError::NoTool)
        } else {
            Err(DnsError::Failed(failures))
        }
    }

    /// The tool that set the servers.
    pub fn tool(&self) -> DnsTool {
        self.tool
    }

    /// Replaces the servers, with the same tool.
    pub fn replace(&mut self, servers: &[IpAddr]) -> Result<(), SysError> {
        self.tool.set(&self.dev, servers).run()
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.tool.revert(&self.dev).run() {
            tracing::warn!(dev = %self.dev, error = %e, "could not take back the DNS servers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Vec<IpAddr> {
        vec!["10.1.0.53".parse().unwrap(), "fd01::53".parse().unwrap()]
    }

    #[test]
    fn resolvectl_commands() {
        let set = DnsTool::Resolvectl.set("ctrc0", &servers());
        assert_eq!(set.program, "resolvectl");
        assert_eq!(set.args, ["dns", "ctrc0", "10.1.0.53", "fd01::53"]);
        assert_eq!(set.stdin, None);
        let revert = DnsTool::Resolvectl.revert("ctrc0");
        assert_eq!(revert.args, ["revert", "ctrc0"]);
    }

    #[test]
    fn resolvconf_commands() {
        let set = DnsTool::Resolvconf.set("ctrc0", &servers());
        assert_eq!(set.program, "resolvconf");
        assert_eq!(set.args, ["-a", "ctrc0"]);
        assert_eq!(
            set.stdin.as_deref(),
            Some("nameserver 10.1.0.53\nnameserver fd01::53\n")
        );
        assert_eq!(DnsTool::Resolvconf.revert("ctrc0").args, ["-d", "ctrc0"]);
    }

    fn missing(run: &ToolRun) -> SysError {
        SysError::ToolMissing {
            program: run.program,
            package: run.package,
        }
    }

    fn failed(run: &ToolRun) -> SysError {
        SysError::Command {
            command: run.program.into(),
            status: "exit status: 1".into(),
            stderr: "no such link".into(),
        }
    }

    #[test]
    fn the_first_tool_present_that_succeeds_is_used() {
        let mut tried = Vec::new();
        // resolvectl missing, resolvconf works.
        let guard = DnsGuard::set_with(&DnsTool::ALL, "ctrc0", &servers(), |run| {
            tried.push(run.program);
            match run.program {
                "resolvectl" => Err(missing(run)),
                _ => Ok(()),
            }
        })
        .unwrap();
        assert_eq!(guard.tool(), DnsTool::Resolvconf);
        assert_eq!(tried, ["resolvectl", "resolvconf"]);
        // Its drop would run `resolvconf -d`: do not let a test touch the host's resolver.
        std::mem::forget(guard);

        // resolvectl present but failing (systemd-resolved not running): resolvconf next.
        let guard = DnsGuard::set_with(&DnsTool::ALL, "ctrc0", &servers(), |run| {
            match run.program {
                "resolvectl" => Err(failed(run)),
                _ => Ok(()),
            }
        })
        .unwrap();
        assert_eq!(guard.tool(), DnsTool::Resolvconf);
        std::mem::forget(guard);
    }

    #[test]
    fn neither_tool_present_says_so() {
        let err = DnsGuard::set_with(&DnsTool::ALL, "ctrc0", &servers(), |run| Err(missing(run)))
            .unwrap_err();
        assert!(matches!(err, DnsError::NoTool));
        let text = err.to_string();
        assert!(
            text.contains("resolvectl") && text.contains("resolvconf"),
            "{text}"
        );
        let err = DnsGuard::set_with(&DnsTool::ALL, "ctrc0", &servers(), |run| {
            match run.program {
                "resolvectl" => Err(failed(run)),
                _ => Err(missing(run)),
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("no such link"), "{err}");
    }
}
