//! The outbound-URL guard: every request Tollgate makes to a URL that someone other than the
//! operator's own upstream configuration chose (an identity provider's `jwks_url`, the alert
//! webhook) goes through [`Outbound`].
//!
//! - **Registration** ([`Outbound::check_registration`]): the URL is parsed strictly (`https`,
//!   or `http` only for allow-listed destinations; no user info; a host; at most 2048 bytes). The
//!   `url` crate normalises hosts the WHATWG way, so `2130706433`, `0x7f.1` and `0177.0.0.1` all
//!   arrive here as `127.0.0.1`. A name is resolved once to refuse the obvious (`localhost`, a
//!   name pointing at `10.0.0.5`); a name that does not resolve yet is accepted, because the
//!   check that decides is the next one.
//! - **Fetch** ([`Outbound::get`], [`Outbound::post_json`]): the name is resolved here, every
//!   address must be public (or allow-listed), and the request is sent on a client whose only
//!   resolver answers that one name with those vetted addresses — a second DNS answer (rebinding)
//!   is never asked for. No proxy, no redirects, short timeouts, a capped response body.
//! - **One error**: every refused or failed fetch is the same [`OutboundError`]; why it failed
//!   is only logged, so a caller cannot tell a refused address from a closed or an open port.
//!
//! Non-public means the IANA special-purpose ranges that are not globally reachable: loopback,
//! RFC 1918 and unique-local (`fc00::/7`), link-local (`169.254/16`, `fe80::/10`), CGNAT
//! (`100.64/10`), unspecified, broadcast, multicast, documentation, benchmarking, reserved, and
//! the IPv6 forms that embed such an IPv4 address (mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`,
//! 6to4 `2002::/16`) or that are deprecated (IPv4-compatible `::/96`, site-local). IPv6 outside
//! `2000::/3` is refused.
//!
//! `[outbound] allow` (see [`Policy`]) admits internal destinations a deployment really uses.

#[cfg(test)]
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use url::{Host, Url};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Deadline for the DNS answer of one fetch (or registration check).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for the TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The one error of an outbound request, whatever went wrong: its text never says whether the
/// destination was refused, unreachable, closed, slow or answered badly. The reason is kept for
/// the log only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OutboundError {
    reason: &'static str,
}

impl OutboundError {
    fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the request failed: for logs and tests, never for a response.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the outbound request was refused or failed")
    }
}

impl std::fmt::Debug for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutboundError({})", self.reason)
    }
}

impl std::error::Error for OutboundError {}

// ---- address classification ---------------------------------------------------------------------

/// A network prefix such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Parses `addr/prefix` (host bits must be zero) or a bare address (`/32`, `/128`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?,
        };
        let c = Self { addr, prefix };
        if !c.contains_same_family(addr) || c.network() != addr {
            return Err(format!(
                "{s:?} has bits set past its prefix; did you mean {}/{prefix}?",
                c.network()
            ));
        }
        Ok(c)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    fn contains_same_family(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask32(self.prefix);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask128(self.prefix);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }

    /// Whether `ip` is in this prefix; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_same_family(canonical(ip))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is; others unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// IPv4 ranges that are not public destinations, most specific first.
const V4_BLOCKED: &[(Cidr, &str)] = &[
    (Cidr::v4(255, 255, 255, 255, 32), "broadcast"),
    (Cidr::v4(0, 0, 0, 0, 32), "unspecified"),
    (Cidr::v4(0, 0, 0, 0, 8), "this network"),
    (Cidr::v4(10, 0, 0, 0, 8), "private"),
    (Cidr::v4(100, 64, 0, 0, 10), "shared address space (CGNAT)"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local"),
    (Cidr::v4(172, 16, 0, 0, 12), "private"),
    (Cidr::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Cidr::v4(192, 0, 2, 0, 24), "documentation"),
    (Cidr::v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (Cidr::v4(192, 168, 0, 0, 16), "private"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking"),
    (Cidr::v4(198, 51, 100, 0, 24), "documentation"),
    (Cidr::v4(203, 0, 113, 0, 24), "documentation"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved"),
];

/// IPv6 ranges that are not public destinations (besides everything outside `2000::/3`).
const V6_BLOCKED: &[(Cidr, &str)] = &[
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64",
    ),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "IPv4-compatible"),
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments",
    ),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (private)",
    ),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKED
        .iter()
        .find(|(c, _)| c.contains_same_family(IpAddr::V4(ip)))
        .map(|(_, why)| *why)
}

/// Why `ip` is not a public destination, or `None` when it is one.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return classify_v4(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return classify_v4(embedded(s[1], s[2]));
            }
            if let Some((_, why)) = V6_BLOCKED.iter().find(|(c, _)| c.contains_same_family(ip)) {
                return Some(why);
            }
            (s[0] & 0xe000 != 0x2000).then_some("reserved")
        }
    }
}

/// Addresses that are never a destination, whatever the allow-list says: connecting to the
/// unspecified address reaches this host, and broadcast or multicast are no peer to talk to.
fn never_a_destination(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

// ---- the allow-list ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// Addresses in a prefix (a bare address is a /32 or /128), on one port or any.
    Net { net: Cidr, port: Option<u16> },
    /// One host name (exactly; no wildcards), on one port or any, whatever it resolves to.
    Host { name: String, port: Option<u16> },
}

/// `[outbound] allow`: destinations admitted although they are not public (and over plain `http`).
///
/// Each entry is one of
/// - a CIDR prefix (`10.0.0.0/8`, `fd00::/8`) or an address (`10.1.2.3`, `::1`): any port;
/// - an address with a port (`127.0.0.1:9000`, `[::1]:9000`): that port only;
/// - a host name (`idp.internal`), optionally with a port (`idp.internal:8443`): that name,
///   whatever it resolves to — so prefer addresses, which do not depend on DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Allow>,
}

fn parse_port(p: &str, entry: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("outbound.allow: {entry:?} has an invalid port"))
}

impl Policy {
    /// Parses the configured entries; an entry that is none of the forms above is an error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut allow = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.as_ref().trim();
            allow.push(Self::parse_entry(e)?);
        }
        Ok(Self { allow })
    }

    fn parse_entry(e: &str) -> Result<Allow, String> {
        if e.is_empty() {
            return Err("outbound.allow: empty entry".into());
        }
        if e.contains('/') {
            let net = Cidr::parse(e).map_err(|m| format!("outbound.allow: {m}"))?;
            return Ok(Allow::Net { net, port: None });
        }
        if let Ok(ip) = e.parse::<IpAddr>() {
            let net = Cidr::parse(&ip.to_string()).map_err(|m| format!("outbound.allow: {m}"))?;
            return Ok(Allow::Net { net, port: None });
        }
        if e.starts_with('[') {
            let sa: SocketAddr = e
                .parse()
                .map_err(|_| format!("outbound.allow: {e:?} is not [IPv6]:port"))?;
            if sa.port() == 0 {
                return Err(format!("outbound.allow: {e:?} has an invalid port"));
            }
            let port = sa.port();
            let net =
                Cidr::parse(&sa.ip().to_string()).map_err(|m| format!("outbound.allow: {m}"))?;
            return Ok(Allow::Net {
                net,
                port: Some(port),
            });
        }
        let (host, port) = match e.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p, e)?)),
            None => (e, None),
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            let net = Cidr::parse(&ip.to_string()).map_err(|m| format!("outbound.allow: {m}"))?;
            return Ok(Allow::Net { net, port });
        }
        // The same normalisation a URL's host gets (lowercase, IDNA), so the entry matches it.
        match Host::parse(host) {
            Ok(Host::Domain(d)) if !d.is_empty() && !d.contains(['*', '@', '?', '#']) => {
                Ok(Allow::Host {
                    name: trim_dot(&d).to_string(),
                    port,
                })
            }
            Ok(Host::Ipv4(ip)) => {
                let net =
                    Cidr::parse(&ip.to_string()).map_err(|m| format!("outbound.allow: {m}"))?;
                Ok(Allow::Net { net, port })
            }
            _ => Err(format!(
                "outbound.allow: {e:?} is not a CIDR prefix, an address[:port] or a host[:port]"
            )),
        }
    }

    fn port_ok(want: Option<u16>, port: u16) -> bool {
        want.is_none_or(|p| p == port)
    }

    /// Whether the host name itself is listed (for this port).
    fn allows_name(&self, name: &str, port: u16) -> bool {
        let name = trim_dot(name);
        self.allow.iter().any(|a| match a {
            Allow::Host { name: n, port: p } => n == name && Self::port_ok(*p, port),
            Allow::Net { .. } => false,
        })
    }

    /// Whether the address is in a listed prefix (for this port).
    fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Net { net, port: p } => net.contains(ip) && Self::port_ok(*p, port),
            Allow::Host { .. } => false,
        })
    }

    /// Whether the policy has no entries (only public `https` destinations).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
}

fn trim_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

// ---- the guard --------------------------------------------------------------------------------------

/// A URL that passed the syntax rules, with what the address checks need.
#[derive(Debug, Clone)]
struct Target {
    url: Url,
    https: bool,
    port: u16,
}

/// What to do when a name does not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDnsFailure {
    /// At registration: accept (the fetch-time check decides).
    Accept,
    /// At fetch time: refuse.
    Refuse,
}

/// The vetted destination of one request: the only addresses its client may connect to.
#[derive(Debug)]
struct Vetted {
    target: Target,
    /// The host name to pin (none for an address literal, which needs no DNS).
    name: Option<String>,
    addrs: Vec<SocketAddr>,
}

/// The guard every outbound request to a user-supplied URL goes through. Cheap to share.
#[derive(Default)]
pub struct Outbound {
    policy: Policy,
    /// rustls with the upstream client's roots, built on first use and shared by every
    /// request's client (loading the system store for each fetch would cost ~40 ms).
    tls: std::sync::OnceLock<Option<rustls::ClientConfig>>,
    /// Unit tests only: names answered without DNS (as a hostile resolver would answer them).
    #[cfg(test)]
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Error text shown when a URL is refused at registration (whatever the reason).
pub const REFUSED_URL: &str =
    "must be an https URL of a public host (or a destination in [outbound] allow); no user info";

impl Outbound {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            tls: std::sync::OnceLock::new(),
            #[cfg(test)]
            hosts: HashMap::new(),
        }
    }

    /// Resolves `name` (bounded by [`DNS_TIMEOUT`]).
    async fn lookup(&self, name: &str, port: u16) -> Result<Vec<IpAddr>, OutboundError> {
        #[cfg(test)]
        if let Some(ips) = self.hosts.get(trim_dot(name)) {
            return Ok(ips.clone());
        }
        resolve(name, port).await
    }

    fn tls(&self) -> Result<rustls::ClientConfig, OutboundError> {
        self.tls
            .get_or_init(|| match tollgate_upstream::client::tls_config() {
                Ok(c) => Some((*c).clone()),
                Err(e) => {
                    tracing::error!(error = %e, "no TLS configuration for outbound requests");
                    None
                }
            })
            .clone()
            .ok_or(OutboundError::new("no TLS configuration"))
    }

    /// Builds the guard from the configuration.
    pub fn from_config(cfg: &crate::config::OutboundConfig) -> anyhow::Result<Self> {
        Ok(Self::new(
            Policy::parse(&cfg.allow).map_err(anyhow::Error::msg)?,
        ))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The syntax rules: `https` (or `http` to a listed destination), no user info, a host,
    /// not too long. `http` to a name whose addresses are listed is decided after resolution.
    fn parse(&self, raw: &str) -> Result<Target, OutboundError> {
        if raw.len() > MAX_URL_LEN {
            return Err(OutboundError::new("URL too long"));
        }
        let url = Url::parse(raw).map_err(|_| OutboundError::new("not an absolute URL"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(OutboundError::new("scheme is not http(s)")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::new("URL has user info"));
        }
        let Some(port) = url.port_or_known_default() else {
            return Err(OutboundError::new("no port"));
        };
        match url.host() {
            Some(Host::Domain(d)) if !trim_dot(d).is_empty() => {}
            Some(Host::Ipv4(_) | Host::Ipv6(_)) => {}
            _ => return Err(OutboundError::new("no host")),
        }
        Ok(Target { url, https, port })
    }

    /// Checks a URL's syntax without resolving it (for configuration loaded at start).
    pub fn check_syntax(&self, raw: &str) -> Result<Url, OutboundError> {
        let t = self.parse(raw)?;
        if !t.https {
            let listed = match t.url.host() {
                Some(Host::Domain(d)) => self.policy.allows_name(d, t.port),
                Some(Host::Ipv4(ip)) => self.policy.allows_addr(IpAddr::V4(ip), t.port),
                Some(Host::Ipv6(ip)) => self.policy.allows_addr(IpAddr::V6(ip), t.port),
                None => false,
            };
            // A name's addresses are only known at fetch time; an unlisted literal never passes.
            let is_literal = !matches!(t.url.host(), Some(Host::Domain(_)));
            if is_literal && !listed {
                return Err(OutboundError::new("http to an unlisted address"));
            }
        }
        Ok(t.url)
    }

    /// The registration check: syntax, then the host's current addresses (a name that does not
    /// resolve is accepted; the fetch-time check decides). Returns the normalised URL to store.
    pub async fn check_registration(&self, raw: &str) -> Result<Url, OutboundError> {
        let t = self.parse(raw)?;
        let v = self.vet(t, OnDnsFailure::Accept).await?;
        Ok(v.target.url)
    }

    /// Resolves and checks every address of the target.
    async fn vet(&self, t: Target, on_failure: OnDnsFailure) -> Result<Vetted, OutboundError> {
        let (name, ips): (Option<String>, Vec<IpAddr>) = match t.url.host() {
            Some(Host::Ipv4(ip)) => (None, vec![IpAddr::V4(ip)]),
            Some(Host::Ipv6(ip)) => (None, vec![IpAddr::V6(ip)]),
            Some(Host::Domain(d)) => {
                let d = d.to_string();
                let name_listed = self.policy.allows_name(&d, t.port);
                // RFC 6761: these names are this host, whatever a resolver says.
                let bare = trim_dot(&d);
                if !name_listed && (bare == "localhost" || bare.ends_with(".localhost")) {
                    return Err(OutboundError::new("localhost"));
                }
                match self.lookup(&d, t.port).await {
                    Ok(ips) => (Some(d), ips),
                    Err(e) => {
                        if on_failure == OnDnsFailure::Accept && (t.https || name_listed) {
                            return Ok(Vetted {
                                target: t,
                                name: Some(d),
                                addrs: Vec::new(),
                            });
                        }
                        return Err(e);
                    }
                }
            }
            None => return Err(OutboundError::new("no host")),
        };
        let name_listed = name
            .as_deref()
            .is_some_and(|n| self.policy.allows_name(n, t.port));
        for ip in &ips {
            if never_a_destination(*ip) {
                return Err(OutboundError::new(
                    "unspecified, broadcast or multicast address",
                ));
            }
            let listed = name_listed || self.policy.allows_addr(*ip, t.port);
            if listed {
                continue;
            }
            if !t.https {
                return Err(OutboundError::new("http to an unlisted destination"));
            }
            if let Some(why) = non_public_reason(*ip) {
                tracing::debug!(address = %ip, reason = why, "outbound destination refused");
                return Err(OutboundError::new("non-public address"));
            }
        }
        let port = t.port;
        Ok(Vetted {
            target: t,
            name,
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        })
    }

    /// A client that can reach only the vetted addresses: its resolver answers the one vetted
    /// name with them and refuses every other name; no proxy, no redirects, no connection reuse.
    fn client(&self, v: &Vetted, timeout: Duration) -> Result<reqwest::Client, OutboundError> {
        let resolver = Arc::new(Pinned {
            name: v.name.clone().unwrap_or_default(),
            addrs: v.addrs.clone(),
        });
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .dns_resolver(resolver)
            .https_only(v.target.https)
            .tls_backend_preconfigured(self.tls()?)
            .build()
            .map_err(|_| OutboundError::new("client"))
    }

    async fn vet_for_fetch(&self, raw: &str) -> Result<Vetted, OutboundError> {
        let t = self.parse(raw)?;
        self.vet(t, OnDnsFailure::Refuse).await
    }

    /// `GET`s `url` and returns its body (at most `limit` bytes) when the answer is a 2xx.
    /// The whole exchange (DNS included) takes at most `timeout`.
    pub async fn get(
        &self,
        url: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, OutboundError> {
        let fut = async {
            let v = self.vet_for_fetch(url).await?;
            let client = self.client(&v, timeout)?;
            let mut res = client
                .get(v.target.url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| OutboundError::new(send_reason(&e)))?;
            if !res.status().is_success() {
                return Err(OutboundError::new("non-2xx status"));
            }
            if res.content_length().is_some_and(|n| n > limit as u64) {
                return Err(OutboundError::new("body too large"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = res
                .chunk()
                .await
                .map_err(|_| OutboundError::new("body read failed"))?
            {
                if body.len().saturating_add(chunk.len()) > limit {
                    return Err(OutboundError::new("body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(OutboundError::new("timed out")))
    }

    /// `POST`s `body` as JSON to `url`; succeeds on a 2xx answer (whose body is not read).
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), OutboundError> {
        let fut = async {
            let v = self.vet_for_fetch(url).await?;
            let client = self.client(&v, timeout)?;
            let res = client
                .post(v.target.url.clone())
                .json(body)
                .send()
                .await
                .map_err(|e| OutboundError::new(send_reason(&e)))?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(OutboundError::new("non-2xx status"))
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(OutboundError::new("timed out")))
    }
}

fn send_reason(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// Resolves `name` (bounded by [`DNS_TIMEOUT`]).
async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, OutboundError> {
    let lookup = tokio::net::lookup_host((trim_dot(name), port));
    match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.dedup();
            if ips.is_empty() {
                Err(OutboundError::new("name has no address"))
            } else {
                Ok(ips)
            }
        }
        Ok(Err(_)) => Err(OutboundError::new("name does not resolve")),
        Err(_) => Err(OutboundError::new("DNS timed out")),
    }
}

/// The resolver of one request's client: the vetted name resolves to the vetted addresses, and
/// nothing else resolves at all.
struct Pinned {
    name: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ok = !self.name.is_empty() && name.as_str().eq_ignore_ascii_case(&self.name);
        let addrs = self.addrs.clone();
        Box::pin(async move {
            if ok && !addrs.is_empty() {
                let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
                Ok(it)
            } else {
                Err(Box::new(OutboundError::new("name not vetted")) as _)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for (a, why) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.20.30.40", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.254", "shared address space (CGNAT)"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.251", "multicast"),
            ("239.1.1.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.7", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.7", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("fc00::1", "unique local (private)"),
            ("fd12:3456::1", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "IETF protocol assignments"),
            ("3fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("4000::1", "reserved"),
            ("::2", "IPv4-compatible"),
        ] {
            assert_eq!(non_public_reason(ip(a)), Some(why), "{a}");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "11.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
        ] {
            assert_eq!(non_public_reason(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn cidrs_parse_strictly_and_match_mapped_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("10.1.0.0/8").is_err(), "host bits set");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("fd00::/129").is_err());
        assert!(Cidr::parse("idp/8").is_err());
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn allow_entries_parse_into_their_forms() {
        let p = Policy::parse(&[
            "10.0.0.0/8",
            "127.0.0.1:9000",
            "[::1]:9001",
            "fd00::1",
            "IdP.Internal",
            "jwks.internal:8443",
            "192.168.1.5",
        ])
        .unwrap();
        assert!(p.allows_addr(ip("10.9.9.9"), 1));
        assert!(p.allows_addr(ip("127.0.0.1"), 9000));
        assert!(!p.allows_addr(ip("127.0.0.1"), 9001));
        assert!(!p.allows_addr(ip("127.0.0.2"), 9000));
        assert!(p.allows_addr(ip("::1"), 9001));
        assert!(!p.allows_addr(ip("::1"), 9000));
        assert!(p.allows_addr(ip("fd00::1"), 443));
        assert!(p.allows_addr(ip("192.168.1.5"), 80));
        assert!(p.allows_name("idp.internal", 80));
        assert!(p.allows_name("idp.internal.", 80));
        assert!(!p.allows_name("x.idp.internal", 80));
        assert!(p.allows_name("jwks.internal", 8443));
        assert!(!p.allows_name("jwks.internal", 443));
        for bad in [
            "",
            "10.1.0.0/8",
            "host:0",
            "host:99999",
            "*.internal",
            "[::1]",
            "a b",
            "http://x",
        ] {
            assert!(Policy::parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_url_crate_normalises_every_ipv4_spelling() {
        for raw in [
            "https://2130706433/jwks",
            "https://0x7f000001/jwks",
            "https://0x7f.0.0.1/jwks",
            "https://0177.0.0.1/jwks",
            "https://017700000001/jwks",
            "https://127.1/jwks",
            "https://127.0.1/jwks",
            "https://%31%32%37.0.0.1/jwks",
            "https://127.0.0.1./jwks",
        ] {
            let u = Url::parse(raw).unwrap();
            assert_eq!(u.host(), Some(Host::Ipv4(Ipv4Addr::LOCALHOST)), "{raw}");
        }
        let u = Url::parse("https://0/jwks").unwrap();
        assert_eq!(u.host(), Some(Host::Ipv4(Ipv4Addr::UNSPECIFIED)));
        let u = Url::parse("https://[::ffff:7f00:1]/jwks").unwrap();
        assert_eq!(
            u.host().map(|h| h.to_owned()),
            Some(Host::Ipv6("::ffff:127.0.0.1".parse().unwrap()))
        );
        // A number too large for IPv4 is no host at all.
        assert!(Url::parse("https://4294967296/").is_err());
    }

    #[tokio::test]
    async fn registration_refuses_non_public_and_malformed_urls() {
        let g = Outbound::default();
        for raw in [
            "https://127.0.0.1/jwks",
            "https://2130706433/jwks",
            "https://0x7f.1/jwks",
            "https://[::1]/jwks",
            "https://[::]/jwks",
            "https://0.0.0.0/jwks",
            "https://0/jwks",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/jwks",
            "https://172.16.5.4/jwks",
            "https://192.168.0.1/jwks",
            "https://100.64.0.1/jwks",
            "https://[fd00::1]/jwks",
            "https://[fe80::1]/jwks",
            "https://[::ffff:127.0.0.1]/jwks",
            "https://[::ffff:a9fe:a9fe]/jwks",
            "https://[64:ff9b::7f00:1]/jwks",
            "https://localhost/jwks",
            "https://LOCALHOST./jwks",
            "https://api.localhost/jwks",
            "http://8.8.8.8/jwks",
            "ftp://8.8.8.8/jwks",
            "file:///etc/passwd",
            "https://user:pw@8.8.8.8/jwks",
            "https://user@8.8.8.8/jwks",
            "jwks.json",
            "https://",
            "https://[::1/",
        ] {
            assert!(g.check_registration(raw).await.is_err(), "{raw}");
        }
        for raw in ["https://8.8.8.8/jwks", "https://[2606:4700:4700::1111]/k"] {
            assert!(g.check_registration(raw).await.is_ok(), "{raw}");
        }
        // A name that does not resolve (yet) is accepted over https; the fetch decides.
        assert!(
            g.check_registration("https://idp.invalid/jwks")
                .await
                .is_ok()
        );
        assert!(
            g.check_registration("http://idp.invalid/jwks")
                .await
                .is_err()
        );
        let long = format!("https://8.8.8.8/{}", "a".repeat(MAX_URL_LEN));
        assert!(g.check_registration(&long).await.is_err());
    }

    #[tokio::test]
    async fn the_allow_list_admits_exactly_its_entries() {
        let g = Outbound::new(
            Policy::parse(&["127.0.0.1:9000", "10.0.0.0/8", "localhost:7000"]).unwrap(),
        );
        for raw in [
            "http://127.0.0.1:9000/jwks",
            "https://127.0.0.1:9000/jwks",
            "http://10.1.2.3/jwks",
            "https://10.1.2.3:8443/jwks",
            "http://[::ffff:10.1.2.3]/jwks",
            "http://localhost:7000/jwks",
        ] {
            assert!(g.check_registration(raw).await.is_ok(), "{raw}");
        }
        for raw in [
            "http://127.0.0.1:9001/jwks",
            "http://127.0.0.2:9000/jwks",
            "http://[::1]:9000/jwks",
            "http://0.0.0.0:9000/jwks",
            "http://11.0.0.1/jwks",
            "http://localhost:7001/jwks",
            "http://localhost/jwks",
            "https://192.168.1.1/jwks",
        ] {
            assert!(g.check_registration(raw).await.is_err(), "{raw}");
        }
        assert!(g.check_syntax("http://127.0.0.1:9000/hook").is_ok());
        assert!(g.check_syntax("http://127.0.0.1:9001/hook").is_err());
        assert!(g.check_syntax("https://hooks.example.com/x").is_ok());
    }

    /// A guard whose resolver answers `names` as given (a hostile or rebinding DNS).
    fn with_hosts(allow: &[&str], names: &[(&str, &[&str])]) -> Outbound {
        let mut g = Outbound::new(Policy::parse(allow).unwrap());
        for (n, ips) in names {
            g.hosts
                .insert((*n).to_string(), ips.iter().map(|a| ip(a)).collect());
        }
        g
    }

    /// A server on 127.0.0.1 answering every request with `{"keys": []}`, counting connections.
    async fn local_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = n.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let body = br#"{"keys": []}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                });
            }
        });
        (port, n)
    }

    #[tokio::test]
    async fn a_name_is_judged_by_every_address_it_resolves_to() {
        let g = with_hosts(
            &[],
            &[
                ("rebind.example", &["127.0.0.1"]),
                ("metadata.example", &["169.254.169.254"]),
                ("mixed.example", &["8.8.8.8", "10.0.0.1"]),
                ("mapped.example", &["::ffff:127.0.0.1"]),
                ("v6.example", &["::1"]),
                ("public.example", &["8.8.8.8", "2606:4700:4700::1111"]),
            ],
        );
        for name in [
            "rebind.example",
            "metadata.example",
            "mixed.example",
            "mapped.example",
            "v6.example",
        ] {
            let url = format!("https://{name}/jwks");
            assert!(g.check_registration(&url).await.is_err(), "{url}");
            let e = g.get(&url, 1024, Duration::from_secs(2)).await.unwrap_err();
            assert_eq!(e.reason(), "non-public address", "{url}");
        }
        assert!(
            g.check_registration("https://public.example/jwks")
                .await
                .is_ok()
        );
        // Plain http to a public name is not listed, so refused.
        assert!(
            g.check_registration("http://public.example/jwks")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_connection_goes_to_the_vetted_address_only() {
        use std::sync::atomic::Ordering;
        let (port, conns) = local_server().await;
        // `pinned.example` does not exist in real DNS: reaching the server proves the client used
        // the vetted address instead of resolving again.
        let listed = format!("127.0.0.1:{port}");
        let g = with_hosts(&[&listed], &[("pinned.example", &["127.0.0.1"])]);
        let url = format!("http://pinned.example:{port}/jwks");
        let body = g.get(&url, 1024, Duration::from_secs(2)).await.unwrap();
        assert_eq!(&body[..], br#"{"keys": []}"#);
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // The same name and server without the allow-list entry: refused, nothing connected.
        let g = with_hosts(&[], &[("pinned.example", &["127.0.0.1"])]);
        let e = g.get(&url, 1024, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.reason(), "http to an unlisted destination");
        let e = g
            .get(
                &format!("https://pinned.example:{port}/jwks"),
                1024,
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "non-public address");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // A body over the limit is refused.
        let g = with_hosts(&[&listed], &[]);
        let e = g
            .get(
                &format!("http://127.0.0.1:{port}/"),
                4,
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "body too large");
    }

    #[tokio::test]
    async fn the_pinned_resolver_answers_only_the_vetted_name() {
        use reqwest::dns::Resolve;
        let addr: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let r = Pinned {
            name: "idp.example.com".into(),
            addrs: vec![addr],
        };
        let got: Vec<SocketAddr> = r
            .resolve("IDP.example.com".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(got, [addr]);
        assert!(
            r.resolve("other.example.com".parse().unwrap())
                .await
                .is_err()
        );
        let none = Pinned {
            name: String::new(),
            addrs: vec![addr],
        };
        assert!(
            none.resolve("idp.example.com".parse().unwrap())
                .await
                .is_err()
        );
    }

    #[test]
    fn the_error_text_is_one_and_the_same() {
        let a = OutboundError::new("connection failed");
        let b = OutboundError::new("non-public address");
        assert_eq!(a.to_string(), b.to_string());
        assert!(!a.to_string().contains("connection"));
    }
}
