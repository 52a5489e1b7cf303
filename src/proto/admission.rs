//! Which handshake initiations earn a Diffie-Hellman, which a cookie reply and which nothing:
//! the one under-load check, used by the data-plane workers (before anything is queued) and by
//! the responder (`handshake::Responder`) alike.
//!
//! As WireGuard does (`device/receive.go`, `drivers/net/wireguard/receive.c`):
//! - mac1 first, always: it costs one HMAC and keeps out whatever was not made for this key;
//! - under load, an initiation without a valid mac2 gets a cookie reply, limited only by a
//!   global budget: its source address is unproven, so a limit per source would be one that
//!   anyone can drain in the victim's name (spoofed datagrams with a valid mac1 cost nothing to
//!   make for whoever holds the server's public key, that is every client);
//! - under load, an initiation whose mac2 is valid proves that its sender receives datagrams at
//!   its source address, and only those are rate limited per source.

use std::net::{IpAddr, SocketAddr};

use super::cookie::{CookieSecrets, ServerMacKeys};
use super::ratelimit::{RateLimiter, SlotLimiter, TokenBucket};
use super::suite::Suite;
use super::time::Instant;
use super::wire;

/// Cookie replies one gate (each data-plane worker, and the responder) sends per second at
/// most, whatever the sources. A flood from spoofed random addresses passes any per-source
/// limit, and each reply costs a worker 4-7 us (0.9 us of MACs and AES-GCM, `benches/proto.rs`
/// `cookie/write_reply`, plus the kernel's UDP send; docs/security.md), so this caps that work
/// near a tenth of a core. Beyond it initiations are shed; a legitimate client then gets its
/// cookie on a later try.
pub const COOKIE_REPLY_BUDGET_PER_SECOND: u32 = 20_000;
/// Cookie replies a gate may send at once after a quiet spell (50 ms at the full rate).
pub const COOKIE_REPLY_BUDGET_BURST: u32 = 1_000;

/// What becomes of an initiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the Diffie-Hellman of this suite: its mac1 is valid and, under load, its mac2
    /// too, within its source's handshake rate.
    Proceed(Suite),
    /// Under load without a valid mac2: answer with a cookie reply in this suite's format (its
    /// budget token is spent).
    CookieReply(Suite),
    /// mac1 is not valid for this server: drop it without an answer.
    BadMac,
    /// Under load without a valid mac2, past the cookie-reply budget: drop it.
    OverReplyBudget,
    /// Under load with a valid mac2, but its source is past its handshake rate: drop it.
    RateLimited,
}

/// A per-source limiter for initiations that proved their source address (valid mac2).
pub trait SourceLimiter {
    /// Whether `src` may start one more handshake `now`; takes a token if so.
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool;
}

impl SourceLimiter for RateLimiter {
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        RateLimiter::allow(self, src, now)
    }
}

impl SourceLimiter for SlotLimiter {
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        SlotLimiter::allow(self, src, now)
    }
}

/// The under-load check with its state: the cookie-reply budget and the per-source handshake
/// limiter (exact in the responder, a fixed table without allocation in the workers).
#[derive(Debug, Clone)]
pub struct Admission<L> {
    replies: TokenBucket,
    per_source: L,
}

impl<L: SourceLimiter> Admission<L> {
    /// A check with the budget [`COOKIE_REPLY_BUDGET_PER_SECOND`] and `per_source` for
    /// initiations with a valid mac2.
    pub fn new(per_source: L) -> Self {
        Admission {
            replies: TokenBucket::new(COOKIE_REPLY_BUDGET_PER_SECOND, COOKIE_REPLY_BUDGET_BURST),
            per_source,
        }
    }

    /// Decides what becomes of `msg`, an initiation (its type and length checked by the
    /// caller) received from `src`. `keys` are the server's mac keys, `secrets` the cookie
    /// secrets in use (only read under load). The suite is the one whose mac1 verifies
    /// ([`ServerMacKeys::suite_of`]); mac2 is then checked with that suite's MAC, and a
    /// [`Verdict::CookieReply`] is for the caller to write in that suite's format
    /// ([`CookieSecrets::write_cookie_reply_for`]). The budgets are shared by both suites.
    pub fn check(
        &mut self,
        keys: &ServerMacKeys,
        secrets: &CookieSecrets,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        under_load: bool,
    ) -> Verdict {
        let Some(suite) = keys.suite_of(msg) else {
            return Verdict::BadMac;
        };
        if !under_load {
            return Verdict::Proceed(suite);
        }
        // An all-zero mac2 means "no cookie yet": skip the MACs of the check, which a flood
        // without cookies would otherwise cost every time.
        let has_cookie = wire::Initiation::new_checked(msg).is_ok_and(|p| p.has_cookie());
        if has_cookie && secrets.check_mac2_for(suite, msg, src) {
            return if self.per_source.allow(src.ip(), now) {
                Verdict::Proceed(suite)
            } else {
                Verdict::RateLimited
            };
        }
        if self.replies.allow(now) {
            Verdict::CookieReply(suite)
        } else {
            Verdict::OverReplyBudget
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cookie::{CookieChecker, CookieJar};
    use crate::proto::ratelimit::{DEFAULT_BURST, DEFAULT_PACKETS_PER_SECOND};
    use crate::proto::rng::{Random, SeededRandom};
    use crate::proto::wire::{COOKIE_REPLY_LEN, INITIATION_LEN};
    use std::time::Duration;

    const SERVER_PUB: [u8; 32] = [9; 32];

    fn ms(ms: u64) -> Instant {
        Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// An initiation with a random body, stamped by `jar` (mac1, and mac2 if it holds a cookie).
    fn stamped(jar: &mut CookieJar, rng: &mut SeededRandom, now: Instant) -> [u8; INITIATION_LEN] {
        let mut m = [0u8; INITIATION_LEN];
        rng.fill(&mut m[4..116]);
        m[0] = 1;
        jar.stamp(&mut m, now);
        m
    }

    struct Fixture<L> {
        rng: SeededRandom,
        checker: CookieChecker,
        admission: Admission<L>,
    }

    /// The responder's check: an exact per-source limiter.
    fn fixture() -> Fixture<RateLimiter> {
        fixture_with(RateLimiter::default())
    }

    fn fixture_with<L: SourceLimiter>(per_source: L) -> Fixture<L> {
        let mut rng = SeededRandom(5);
        let checker = CookieChecker::new(&SERVER_PUB, ms(0), &mut rng);
        Fixture {
            rng,
            checker,
            admission: Admission::new(per_source),
        }
    }

    impl<L: SourceLimiter> Fixture<L> {
        fn check(&mut self, msg: &[u8], src: SocketAddr, now: Instant, load: bool) -> Verdict {
            self.admission.check(
                self.checker.keys(),
                self.checker.secrets(),
                msg,
                src,
                now,
                load,
            )
        }

        /// A jar holding the cookie this server gives `src`.
        fn jar_with_cookie(&mut self, src: SocketAddr, now: Instant) -> CookieJar {
            let mut jar = CookieJar::new(&SERVER_PUB);
            let first = stamped(&mut jar, &mut self.rng, now);
            let mut reply = [0u8; COOKIE_REPLY_LEN];
            self.checker
                .write_cookie_reply(&first, src, now, &mut self.rng, &mut reply);
            jar.accept_cookie_reply(&reply, now).unwrap();
            jar
        }
    }

    #[test]
    fn mac1_first_then_cookies_only_under_load() {
        let mut f = fixture();
        let src = addr("192.0.2.1:1000");
        let mut jar = CookieJar::new(&SERVER_PUB);
        let m = stamped(&mut jar, &mut f.rng, ms(0));
        assert_eq!(
            f.check(&m, src, ms(0), false),
            Verdict::Proceed(Suite::Native)
        );
        assert_eq!(
            f.check(&m, src, ms(0), true),
            Verdict::CookieReply(Suite::Native)
        );
        let mut other = CookieJar::new(&[8; 32]);
        let foreign = stamped(&mut other, &mut f.rng, ms(0));
        assert_eq!(f.check(&foreign, src, ms(0), false), Verdict::BadMac);
        assert_eq!(f.check(&foreign, src, ms(0), true), Verdict::BadMac);
    }

    #[test]
    fn a_valid_mac2_proceeds_only_from_the_address_it_was_made_for() {
        let mut f = fixture();
        let src = addr("192.0.2.1:1000");
        let mut jar = f.jar_with_cookie(src, ms(0));
        let m = stamped(&mut jar, &mut f.rng, ms(1));
        assert_eq!(
            f.check(&m, src, ms(1), true),
            Verdict::Proceed(Suite::Native)
        );
        let elsewhere = addr("192.0.2.1:1001");
        assert_eq!(
            f.check(&m, elsewhere, ms(1), true),
            Verdict::CookieReply(Suite::Native)
        );
    }

    #[test]
    fn cookie_replies_have_no_per_source_limit_only_the_budget() {
        let mut f = fixture();
        let src = addr("192.0.2.1:1000");
        let mut jar = CookieJar::new(&SERVER_PUB);
        let m = stamped(&mut jar, &mut f.rng, ms(0));
        // One source asking at once gets the whole burst of the budget, then nothing.
        let burst = (0..2 * COOKIE_REPLY_BUDGET_BURST)
            .filter(|_| f.check(&m, src, ms(0), true) == Verdict::CookieReply(Suite::Native))
            .count();
        assert_eq!(burst, COOKIE_REPLY_BUDGET_BURST as usize);
        assert_eq!(f.check(&m, src, ms(0), true), Verdict::OverReplyBudget);
        // The budget refills at its rate, whoever asks.
        let per_ms = (COOKIE_REPLY_BUDGET_PER_SECOND / 1000) as usize;
        let later = (0..2 * per_ms)
            .filter(|i| {
                let from = SocketAddr::new(src.ip(), 2000 + *i as u16);
                f.check(&m, from, ms(1), true) == Verdict::CookieReply(Suite::Native)
            })
            .count();
        assert_eq!(later, per_ms);
    }

    #[test]
    fn an_exhausted_budget_does_not_stop_a_valid_mac2() {
        let mut f = fixture();
        let victim = addr("192.0.2.1:1000");
        let mut jar = f.jar_with_cookie(victim, ms(0));
        let mut junk_jar = CookieJar::new(&SERVER_PUB);
        let junk = stamped(&mut junk_jar, &mut f.rng, ms(0));
        while f.check(&junk, victim, ms(0), true) == Verdict::CookieReply(Suite::Native) {}
        let m = stamped(&mut jar, &mut f.rng, ms(0));
        assert_eq!(
            f.check(&m, victim, ms(0), true),
            Verdict::Proceed(Suite::Native)
        );
    }

    /// Both limiters the check is used with: the responder's exact one and the workers' fixed
    /// table.
    fn limits_valid_mac2_initiations_per_source<L: SourceLimiter>(mut f: Fixture<L>) {
        let src = addr("192.0.2.1:1000");
        let mut jar = f.jar_with_cookie(src, ms(0));
        let burst = (0..2 * DEFAULT_BURST)
            .filter(|_| {
                let m = stamped(&mut jar, &mut f.rng, ms(0));
                f.check(&m, src, ms(0), true) == Verdict::Proceed(Suite::Native)
            })
            .count();
        assert_eq!(burst, DEFAULT_BURST as usize);
        let m = stamped(&mut jar, &mut f.rng, ms(0));
        assert_eq!(f.check(&m, src, ms(0), true), Verdict::RateLimited);
        // One token per 1/DEFAULT_PACKETS_PER_SECOND.
        let refill = Duration::from_secs(1) / DEFAULT_PACKETS_PER_SECOND;
        let then = ms(0) + refill;
        let m = stamped(&mut jar, &mut f.rng, then);
        assert_eq!(
            f.check(&m, src, then, true),
            Verdict::Proceed(Suite::Native)
        );
        let m = stamped(&mut jar, &mut f.rng, then);
        assert_eq!(f.check(&m, src, then, true), Verdict::RateLimited);
        // Another proven source has its own budget.
        let other = addr("192.0.2.2:1000");
        let mut other_jar = f.jar_with_cookie(other, ms(0));
        let m = stamped(&mut other_jar, &mut f.rng, ms(0));
        assert_eq!(
            f.check(&m, other, ms(0), true),
            Verdict::Proceed(Suite::Native)
        );
    }

    #[test]
    fn valid_mac2_initiations_are_limited_per_source() {
        limits_valid_mac2_initiations_per_source(fixture());
        limits_valid_mac2_initiations_per_source(fixture_with(SlotLimiter::new(
            DEFAULT_PACKETS_PER_SECOND,
            DEFAULT_BURST,
            4096,
        )));
    }

    #[test]
    fn junk_from_a_source_does_not_drain_its_handshake_rate() {
        // Valid mac1, no or a wrong mac2, at ten times any per-source rate, from the victim's
        // own address and port: all of it answered within the budget, and the victim's
        // proven initiations pass as if nothing happened.
        let mut f = fixture();
        let victim = addr("192.0.2.1:1000");
        let mut jar = f.jar_with_cookie(victim, ms(0));
        let mut junk_jar = CookieJar::new(&SERVER_PUB);
        let mut proceeded = 0;
        for i in 0..1000u64 {
            let now = ms(i * 5);
            let mut junk = stamped(&mut junk_jar, &mut f.rng, now);
            if i % 2 == 1 {
                f.rng.fill(&mut junk[132..]);
            }
            assert_eq!(
                f.check(&junk, victim, now, true),
                Verdict::CookieReply(Suite::Native)
            );
            if i % 100 == 0 {
                let m = stamped(&mut jar, &mut f.rng, now);
                proceeded +=
                    usize::from(f.check(&m, victim, now, true) == Verdict::Proceed(Suite::Native));
            }
        }
        assert_eq!(proceeded, 10);
    }

    /// A WireGuard initiation with a random body and WireGuard's mac1 (and mac2 under `cookie`).
    fn wireguard_stamped(
        rng: &mut SeededRandom,
        cookie: Option<&[u8; crate::proto::wire::MAC_LEN]>,
    ) -> [u8; INITIATION_LEN] {
        use crate::proto::wireguard;
        let mut m = [0u8; INITIATION_LEN];
        rng.fill(&mut m[4..116]);
        m[0] = 1;
        wireguard::write_mac1(&wireguard::WgMacKeys::new(&SERVER_PUB), &mut m);
        if let Some(cookie) = cookie {
            wireguard::write_mac2(cookie, &mut m);
        }
        m
    }

    #[test]
    fn the_suite_is_the_one_whose_mac1_verifies_and_mac2_is_checked_with_its_mac() {
        use crate::proto::wire::CookieReply;
        use crate::proto::wireguard;
        let mut f = fixture();
        let src = addr("192.0.2.9:4000");
        let m = wireguard_stamped(&mut f.rng, None);
        assert_eq!(
            f.check(&m, src, ms(0), false),
            Verdict::Proceed(Suite::WireGuard)
        );
        assert_eq!(
            f.check(&m, src, ms(0), true),
            Verdict::CookieReply(Suite::WireGuard)
        );
        // The reply is WireGuard's: the cookie opens with XChaCha20-Poly1305 under its key.
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        f.checker
            .write_cookie_reply_for(Suite::WireGuard, &m, src, ms(0), &mut f.rng, &mut reply);
        let view = CookieReply::new_checked(&reply[..]).unwrap();
        let cookie = wireguard::open_cookie(
            &wireguard::WgMacKeys::new(&SERVER_PUB),
            view.nonce(),
            view.encrypted_cookie(),
            &m[116..132].try_into().unwrap(),
        )
        .expect("a WireGuard cookie reply");
        // With a mac2 under that cookie it proceeds under load; from another port it does not.
        let proven = wireguard_stamped(&mut f.rng, Some(&cookie));
        assert_eq!(
            f.check(&proven, src, ms(1), true),
            Verdict::Proceed(Suite::WireGuard)
        );
        assert_eq!(
            f.check(&proven, addr("192.0.2.9:4001"), ms(1), true),
            Verdict::CookieReply(Suite::WireGuard)
        );
        // A native mac2 (HMAC) under the same cookie bytes does not count for WireGuard.
        let mut native_mac2 = wireguard_stamped(&mut f.rng, None);
        crate::proto::cookie::write_mac2(&cookie, &mut native_mac2);
        assert_eq!(
            f.check(&native_mac2, src, ms(1), true),
            Verdict::CookieReply(Suite::WireGuard)
        );
        // Neither suite's mac1: dropped.
        let mut junk = m;
        junk[120] ^= 1;
        assert_eq!(f.check(&junk, src, ms(0), false), Verdict::BadMac);
    }
}
