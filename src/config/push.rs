//! `push_routes` and `push_dns`, at the top of the server's file (every peer) and in a
//! `[[peer]]` (that peer, in addition): parsed into the protocol's [`PushConfig`], with the
//! limits of a push message checked here so that a file the server accepts always fits.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Problems;
use crate::proto::wire::{
    check_dns_server, check_route, PushConfig, MAX_PUSH_DNS_PER_FAMILY, MAX_PUSH_ROUTES_PER_FAMILY,
};

/// Parses one level's `push_routes` and `push_dns`; `prefix` is `""` at the top and
/// `"peer[3]."` in a peer, for the field names. Bad entries are problems, repeated ones
/// warnings (and left out).
pub(crate) fn parse(
    routes: Option<&[String]>,
    dns: Option<&[String]>,
    prefix: &str,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> PushConfig {
    let mut nets: Vec<IpNet> = Vec::new();
    for (i, text) in routes.unwrap_or_default().iter().enumerate() {
        let field = format!("{prefix}push_routes[{i}]");
        let t = text.trim();
        let net = match t.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => {
                problems.push(
                    field,
                    format!("{t:?} is not a network; write e.g. \"10.98.0.0/24\" or \"fd98::/64\""),
                );
                continue;
            }
        };
        if let Err(e) = check_route(net) {
            problems.push(field, e.to_string());
        } else if nets.contains(&net) {
            warnings.push(format!("{field}: {net} is listed twice; remove one"));
        } else {
            nets.push(net);
        }
    }
    let mut servers: Vec<IpAddr> = Vec::new();
    for (i, text) in dns.unwrap_or_default().iter().enumerate() {
        let field = format!("{prefix}push_dns[{i}]");
        let t = text.trim();
        let ip = match t.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                problems.push(
                    field,
                    format!(
                        "{t:?} is not an IP address; write a DNS server's address, e.g. \
                         \"10.1.0.53\" or \"fd01::53\" (no port)"
                    ),
                );
                continue;
            }
        };
        if let Err(e) = check_dns_server(ip) {
            problems.push(field, e.to_string());
        } else if servers.contains(&ip) {
            warnings.push(format!("{field}: {ip} is listed twice; remove one"));
        } else {
            servers.push(ip);
        }
    }
    check_counts(&nets, &servers, prefix, "", problems);
    // Within the limits and checked entry by entry above, so `new` only fails where a problem
    // is already reported.
    PushConfig::new(nets, servers).unwrap_or_default()
}

/// Reports a family over its limit. `context` explains counts that add two levels up.
fn check_counts(
    nets: &[IpNet],
    servers: &[IpAddr],
    prefix: &str,
    context: &str,
    problems: &mut Problems,
) {
    for v4 in [true, false] {
        let family = if v4 { "IPv4" } else { "IPv6" };
        let n = nets
            .iter()
            .filter(|r| matches!(r, IpNet::V4(_)) == v4)
            .count();
        if n > MAX_PUSH_ROUTES_PER_FAMILY {
            problems.push(
                format!("{prefix}push_routes"),
                format!(
                    "{n} {family} routes{context}; a client can be pushed at most \
                     {MAX_PUSH_ROUTES_PER_FAMILY} per address family: summarize them into \
                     shorter prefixes"
                ),
            );
        }
        let n = servers.iter().filter(|s| s.is_ipv4() == v4).count();
        if n > MAX_PUSH_DNS_PER_FAMILY {
            problems.push(
                format!("{prefix}push_dns"),
                format!(
                    "{n} {family} DNS servers{context}; a client can be pushed at most \
                     {MAX_PUSH_DNS_PER_FAMILY} per address family"
                ),
            );
        }
    }
}

/// What a peer is pushed: the global settings, then its own. Checks the limits on the sum
/// (a problem names the peer's fields) and warns about entries the peer repeats from the
/// global ones.
pub(crate) fn for_peer(
    global: &PushConfig,
    own: &PushConfig,
    prefix: &str,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> PushConfig {
    for net in own.routes().iter().filter(|r| global.routes().contains(r)) {
        warnings.push(format!(
            "{prefix}push_routes: {net} is already pushed to every peer by the top-level \
             push_routes; remove it here"
        ));
    }
    for ip in own.dns().iter().filter(|d| global.dns().contains(d)) {
        warnings.push(format!(
            "{prefix}push_dns: {ip} is already pushed to every peer by the top-level push_dns; \
             remove it here"
        ));
    }
    match global.merged(own) {
        Ok(merged) => merged,
        Err(_) => {
            let mut nets = global.routes().to_vec();
            nets.extend(own.routes().iter().filter(|r| !global.routes().contains(r)));
            let mut servers = global.dns().to_vec();
            servers.extend(own.dns().iter().filter(|d| !global.dns().contains(d)));
            check_counts(
                &nets,
                &servers,
                prefix,
                " with the top-level ones added",
                problems,
            );
            global.clone()
        }
    }
}

/// Warns about IPv6 entries when the clients have no IPv6 address in the tunnel: their
/// packets to those networks would carry another source and be dropped by the server.
pub(crate) fn warn_without_ipv6(
    push: &PushConfig,
    prefix: &str,
    has_address6: bool,
    warnings: &mut Vec<String>,
) {
    if has_address6 {
        return;
    }
    if let Some(net) = push.routes().iter().find(|r| matches!(r, IpNet::V6(_))) {
        warnings.push(format!(
            "{prefix}push_routes: {net} is IPv6, but the server has no address6, so clients \
             have no IPv6 address in the tunnel to send from; add address6 or remove the route"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_are_checked_one_by_one() {
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        let routes = strings(&[
            "10.98.0.0/24",
            "nope",
            "10.98.0.1/24",
            "0.0.0.0/0",
            "10.98.0.0/24",
        ]);
        let dns = strings(&["10.1.0.53", "10.1.0.53:53", "0.0.0.0"]);
        let push = parse(
            Some(&routes),
            Some(&dns),
            "peer[2].",
            &mut problems,
            &mut warnings,
        );
        assert_eq!(push.routes(), &["10.98.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(push.dns(), &["10.1.0.53".parse::<IpAddr>().unwrap()]);
        let err = problems.into_error(std::path::Path::new("x"));
        for field in [
            "peer[2].push_routes[1]",
            "peer[2].push_routes[2]",
            "peer[2].push_routes[3]",
            "peer[2].push_dns[1]",
            "peer[2].push_dns[2]",
        ] {
            assert!(err.has_field(field), "no problem for {field}: {err}");
        }
        let text = err.to_string();
        assert!(text.contains("write 10.98.0.0/24"), "{text}");
        assert!(text.contains("0.0.0.0/1 and 128.0.0.0/1"), "{text}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("peer[2].push_routes[4]"),
            "{warnings:?}"
        );
    }

    #[test]
    fn too_many_is_a_problem_naming_the_limit() {
        let routes: Vec<String> = (0..=MAX_PUSH_ROUTES_PER_FAMILY)
            .map(|i| format!("10.{i}.0.0/16"))
            .collect();
        let dns: Vec<String> = (1..=5).map(|i| format!("fd01::{i}")).collect();
        let mut problems = Problems::default();
        parse(
            Some(&routes),
            Some(&dns),
            "",
            &mut problems,
            &mut Vec::new(),
        );
        let err = problems.into_error(std::path::Path::new("x"));
        assert!(
            err.has_field("push_routes") && err.has_field("push_dns"),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("33 IPv4 routes") && text.contains("at most 32"),
            "{text}"
        );
        assert!(
            text.contains("5 IPv6 DNS servers") && text.contains("at most 4"),
            "{text}"
        );
    }

    #[test]
    fn a_peer_adds_to_the_global_settings_within_the_limits() {
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        let global = parse(
            Some(&strings(&["10.98.0.0/24"])),
            Some(&strings(&["10.1.0.53", "10.1.0.54", "10.1.0.55"])),
            "",
            &mut problems,
            &mut warnings,
        );
        let own = parse(
            Some(&strings(&["10.97.0.0/24", "10.98.0.0/24"])),
            None,
            "peer[0].",
            &mut problems,
            &mut warnings,
        );
        let merged = for_peer(&global, &own, "peer[0].", &mut problems, &mut warnings);
        assert!(problems.is_empty());
        assert_eq!(merged.routes().len(), 2);
        assert_eq!(merged.dns().len(), 3);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("already pushed to every peer"),
            "{warnings:?}"
        );

        let two_more = parse(
            None,
            Some(&strings(&["10.2.0.1", "10.2.0.2"])),
            "peer[1].",
            &mut problems,
            &mut warnings,
        );
        let merged = for_peer(&global, &two_more, "peer[1].", &mut problems, &mut warnings);
        assert_eq!(merged, global, "over the limit: the global settings alone");
        let err = problems.into_error(std::path::Path::new("x"));
        assert!(err.has_field("peer[1].push_dns"), "{err}");
        assert!(
            err.to_string().contains("with the top-level ones added"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_routes_without_address6_warn() {
        let push = PushConfig::new(vec!["fd98::/64".parse().unwrap()], Vec::new()).unwrap();
        let mut warnings = Vec::new();
        warn_without_ipv6(&push, "", true, &mut warnings);
        assert!(warnings.is_empty());
        warn_without_ipv6(&push, "", false, &mut warnings);
        assert!(warnings[0].contains("address6"), "{warnings:?}");
    }
}
