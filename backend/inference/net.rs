//! What a remote model may reach and which server secrets it may read.
//!
//! Model output and model endpoints are attacker-controlled as far as the server is concerned,
//! so outbound requests obey an [`OutboundPolicy`]: public addresses are allowed, while
//! loopback, private, link-local (cloud metadata), carrier-grade NAT, multicast and other
//! special ranges are refused unless an admin listed them (`ELITE_OUTBOUND_ALLOW`, or
//! `--outbound-allow` on `serve`/`worker`: comma-separated addresses or CIDR blocks). The check
//! runs on every address a host name resolves to, and on literal addresses in the URL, so DNS
//! tricks such as a name resolving to 127.0.0.1 are refused as well. Redirects are not followed
//! and proxies from the environment are ignored, so the checked address is the one connected to.
//!
//! API keys are read from environment variables whose names an admin allowed: any name starting
//! with [`SECRET_PREFIX`], or one listed in `ELITE_ALLOWED_SECRETS`. Nothing else of the
//! server's environment can be named by a model spec.
//!
//! [`excerpt`] turns a remote reply into the short, sanitised quote that error messages carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::InferenceError;

/// Environment variables with this prefix may hold API keys.
pub const SECRET_PREFIX: &str = "ELITE_SECRET_";
/// Extra allowed secret variable names, comma-separated.
pub const ALLOWED_SECRETS_ENV: &str = "ELITE_ALLOWED_SECRETS";
/// Addresses or CIDR blocks of special ranges that outbound requests may reach.
pub const OUTBOUND_ALLOW_ENV: &str = "ELITE_OUTBOUND_ALLOW";
/// Longest quote of a remote reply in an error message, in characters.
pub const EXCERPT_CHARS: usize = 200;

/// Which special-range addresses outbound model requests may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allowed: Vec<IpNet>,
}

impl OutboundPolicy {
    /// Parse a comma- or space-separated list of addresses and CIDR blocks. Empty means
    /// public addresses only.
    pub fn parse(list: &str) -> Result<Self, InferenceError> {
        let mut allowed = Vec::new();
        for entry in list
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    InferenceError::InvalidSpec(format!(
                        "outbound allow-list entry {entry:?} is not an address or CIDR block"
                    ))
                })?,
            };
            allowed.push(net);
        }
        Ok(OutboundPolicy { allowed })
    }

    /// Whether a request may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_special(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Refuse a URL whose host is a literal address the policy does not permit (names are
    /// checked when they resolve).
    pub fn check_url(&self, url: &str) -> Result<(), InferenceError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| InferenceError::InvalidSpec(format!("base_url is not a URL: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| InferenceError::InvalidSpec("base_url has no host".into()))?;
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check_ip(ip),
            Err(_) => Ok(()),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), InferenceError> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(refused(ip))
        }
    }
}

fn refused(ip: IpAddr) -> InferenceError {
    InferenceError::InvalidSpec(format!(
        "outbound requests to {ip} are not allowed: an admin must list it in {OUTBOUND_ALLOW_ENV} (or --outbound-allow)"
    ))
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation, benchmarking and reserved ranges.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
}

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || ip.to_ipv4().is_some_and(is_special_v4)
}

fn slot() -> &'static RwLock<Option<Arc<OutboundPolicy>>> {
    static POLICY: RwLock<Option<Arc<OutboundPolicy>>> = RwLock::new(None);
    &POLICY
}

/// Set this process's outbound policy (serve and worker call it at start; tests that talk to
/// loopback servers call it too).
pub fn set_outbound_policy(policy: OutboundPolicy) {
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(policy));
}

/// Set this process's outbound policy unless one was set already (test support that must not
/// widen a policy a test set on purpose). Returns whether it was set.
pub fn set_outbound_policy_if_unset(policy: OutboundPolicy) -> bool {
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return false;
    }
    *slot = Some(Arc::new(policy));
    true
}

/// This process's outbound policy: the one set, else `ELITE_OUTBOUND_ALLOW`, else public
/// addresses only. An unreadable environment value allows nothing special.
pub fn outbound_policy() -> Arc<OutboundPolicy> {
    if let Some(policy) = slot().read().unwrap_or_else(|e| e.into_inner()).clone() {
        return policy;
    }
    let from_env = std::env::var(OUTBOUND_ALLOW_ENV)
        .ok()
        .and_then(|v| OutboundPolicy::parse(&v).ok())
        .unwrap_or_default();
    Arc::new(from_env)
}

/// A DNS resolver that drops the addresses the policy refuses.
pub struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<OutboundPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let shown = found
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let error: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves to {shown}, which the outbound policy refuses (an admin can allow it with {OUTBOUND_ALLOW_ENV})"
                )
                .into();
                return Err(error);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Whether a model spec may name this environment variable as its API key.
pub fn secret_allowed(name: &str) -> bool {
    if name.len() > SECRET_PREFIX.len()
        && name.starts_with(SECRET_PREFIX)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return true;
    }
    std::env::var(ALLOWED_SECRETS_ENV).is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|allowed| !allowed.is_empty() && allowed == name)
    })
}

/// The start of a remote reply, safe to show: control characters become spaces, runs of
/// whitespace collapse, and at most [`EXCERPT_CHARS`] characters are kept.
pub fn excerpt(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == EXCERPT_CHARS {
            out.push('…');
            let total = text.len();
            out.push_str(&format!(" ({total} bytes)"));
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_refused_unless_listed() {
        let none = OutboundPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!none.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(none.permits(ip.parse().unwrap()), "{ip}");
        }
        let some = OutboundPolicy::parse("127.0.0.0/8, 10.0.0.5").unwrap();
        assert!(some.permits("127.0.0.2".parse().unwrap()));
        assert!(some.permits("10.0.0.5".parse().unwrap()));
        assert!(!some.permits("10.0.0.6".parse().unwrap()));
        assert!(OutboundPolicy::parse("not-an-address").is_err());
    }

    #[test]
    fn literal_hosts_are_checked() {
        let none = OutboundPolicy::default();
        assert!(none.check_url("http://127.0.0.1:8000/v1").is_err());
        assert!(none.check_url("http://[::1]:8000/v1").is_err());
        assert!(none.check_url("http://169.254.169.254/latest").is_err());
        assert!(none.check_url("https://api.example.com/v1").is_ok());
    }

    #[test]
    fn secret_names_need_the_prefix() {
        assert!(secret_allowed("ELITE_SECRET_OPENAI"));
        assert!(!secret_allowed("ELITE_SECRET_"));
        assert!(!secret_allowed("AWS_SECRET_ACCESS_KEY"));
        assert!(!secret_allowed("DATABASE_URL"));
        assert!(!secret_allowed("ELITE_SECRET_A=B"));
    }

    #[test]
    fn excerpts_are_short_and_clean() {
        let long = format!("line1\n\u{1b}[31mred\r\n{}", "x".repeat(5000));
        let e = excerpt(&long);
        assert!(e.chars().count() < EXCERPT_CHARS + 30, "{e}");
        assert!(!e.chars().any(|c| c.is_control()));
        assert!(e.starts_with("line1 [31mred x"));
        assert_eq!(excerpt("short"), "short");
    }
}
