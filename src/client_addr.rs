//! The client's address (`remote_addr`), which per-IP rate limits and logs rely on.
//!
//! The reference believed `X-Forwarded-For`, `X-Real-IP` and `Forwarded` from anyone,
//! so a client could pick its own address and dodge per-IP limits. Here those headers
//! count only when the TCP peer is a configured trusted proxy (`trusted_proxies`,
//! default: loopback). `X-Forwarded-For` is read from the right: the first address
//! that is not itself a trusted proxy is the client.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// The default: proxies on the same machine.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

impl TrustedProxies {
    /// Parse addresses (`10.0.0.1`) and networks (`10.0.0.0/8`); returns the
    /// offending entry on failure.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(text.to_owned()),
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request that arrived from `peer`, as text: an
    /// address taken from a forwarding header as the proxy wrote it (as the
    /// reference gave it: `2001:DB8:0::1` stays so), the peer's as `Display` writes it.
    pub fn client_addr(&self, headers: &HeaderMap, peer: IpAddr) -> String {
        match self.client_ip(headers, peer) {
            Found::Peer(ip) => ip_text(ip),
            Found::Written(_, text) => text.to_owned(),
        }
    }

    /// The client address for a request that arrived from `peer`.
    fn client_ip<'h>(&self, headers: &'h HeaderMap, peer: IpAddr) -> Found<'h> {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return Found::Peer(peer);
        }
        // Most requests name no forwarding header: one look at each name (a
        // comparison of the header kinds, for the usual standard ones) settles it,
        // where the searches below hash each of the three names.
        let forwarding = |name: &http::HeaderName| {
            name == X_FORWARDED_FOR || name == X_REAL_IP || name == http::header::FORWARDED
        };
        if !headers.keys().any(forwarding) {
            return Found::Peer(peer);
        }
        let forwarded_for: Vec<Found<'h>> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_ip)
            .collect();
        if let Some(ip) = self.rightmost_untrusted(&forwarded_for) {
            return ip;
        }
        if let Some(found) = headers
            .get(X_REAL_IP)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ip)
        {
            return found;
        }
        let forwarded: Vec<Found<'h>> = headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_ip(value))
                        .flatten()
                })
            })
            .collect();
        if let Some(ip) = self.rightmost_untrusted(&forwarded) {
            return ip;
        }
        Found::Peer(peer)
    }

    fn rightmost_untrusted<'h>(&self, chain: &[Found<'h>]) -> Option<Found<'h>> {
        chain
            .iter()
            .rev()
            .find(|found| !self.trusts(found.ip()))
            .or_else(|| chain.first())
            .copied()
    }
}

/// Where the client address came from.
#[derive(Clone, Copy)]
enum Found<'h> {
    /// The TCP peer.
    Peer(IpAddr),
    /// A forwarding header: the address, and its text as written there (without
    /// quotes, brackets or port).
    Written(IpAddr, &'h str),
}

impl Found<'_> {
    fn ip(&self) -> IpAddr {
        match *self {
            Found::Peer(ip) | Found::Written(ip, _) => ip,
        }
    }
}

/// An address as `Display` writes it, without the formatting machinery for IPv4
/// (this runs for every request).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:567`, `"[::1]:80"`, `::1`;
/// with the address's own text.
fn parse_ip(text: &str) -> Option<Found<'_>> {
    let text = text.trim().trim_matches('"');
    let address = if text.parse::<IpAddr>().is_ok() {
        text
    } else if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        text.rsplit_once(':')?.0
    };
    let ip = address.parse::<IpAddr>().ok()?;
    Some(Found::Written(canonical(ip), address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse(&DEFAULT_TRUSTED_PROXIES).unwrap();
        let forged = headers(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(
            trusted.client_addr(&forged, "203.0.113.9".parse().unwrap()),
            "203.0.113.9"
        );
        assert_eq!(
            trusted.client_addr(&forged, "127.0.0.1".parse().unwrap()),
            "6.6.6.6"
        );
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let trusted = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(
            trusted.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "198.51.100.7"
        );
        let h = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            trusted.client_addr(&h, "10.9.9.9".parse().unwrap()),
            "198.51.100.8"
        );
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(
            trusted.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "2001:db8::1"
        );
        // Addresses from headers keep the form the proxy wrote.
        let h = headers(&[("x-forwarded-for", " 2001:DB8:0:0::1 , 10.0.0.2")]);
        assert_eq!(
            trusted.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "2001:DB8:0:0::1"
        );
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.9")]);
        assert_eq!(
            trusted.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "::ffff:198.51.100.9"
        );
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            trusted.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "127.0.0.1"
        );
    }

    #[test]
    fn empty_list_trusts_nobody_and_bad_entries_are_reported() {
        let none = TrustedProxies::parse::<&str>(&[]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(
            none.client_addr(&h, "127.0.0.1".parse().unwrap()),
            "127.0.0.1"
        );
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err(),
            "10.0.0.0/33"
        );
    }
}
