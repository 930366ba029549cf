//! Remote address patterns of `plain_acl.yml` (`globalWhiteRemoteAddresses`, an account's
//! `whiteRemoteAddress`), the forms Apache's `RemoteAddressStrategyFactory` takes:
//!
//! * `*` or `*.*.*.*`: every address;
//! * `192.168.0.1`, `::1`: one address (IPv6 compared as addresses, not text);
//! * `192.168.0.1,192.168.0.2`: any of a list;
//! * `192.168.0.{1,2,3}`: the last segment from a list;
//! * `192.168.*.*`, `192.168.1.1-10`: IPv4 segments as `*` or an inclusive range.
//!
//! A blank pattern matches nothing; a pattern that parses as none of these is an error, so a
//! typo is reported at load instead of silently locking everyone out (or in).

use std::net::IpAddr;

/// Most alternatives one pattern may list.
const MAX_ALTERNATIVES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Exact(IpAddr),
    /// Per IPv4 segment: inclusive range.
    V4([(u8, u8); 4]),
}

/// A parsed address pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrPattern {
    text: String,
    all: bool,
    alts: Vec<Alt>,
}

impl AddrPattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let mut p = AddrPattern {
            text: t.to_owned(),
            all: false,
            alts: Vec::new(),
        };
        if t.is_empty() {
            return Ok(p);
        }
        if t == "*" || t == "*.*.*.*" || t == "*:*:*:*:*:*:*:*" {
            p.all = true;
            return Ok(p);
        }
        let items: Vec<String> = match (t.find('{'), t.ends_with('}')) {
            (Some(open), true) => {
                let prefix = &t[..open];
                t[open + 1..t.len() - 1]
                    .split(',')
                    .map(|s| format!("{prefix}{}", s.trim()))
                    .collect()
            }
            (None, _) => t.split(',').map(|s| s.trim().to_owned()).collect(),
            _ => return Err(format!("address pattern {t:?}: unbalanced braces")),
        };
        if items.len() > MAX_ALTERNATIVES {
            return Err(format!(
                "address pattern {t:?}: more than {MAX_ALTERNATIVES} alternatives"
            ));
        }
        for item in items.iter().filter(|i| !i.is_empty()) {
            p.alts.push(parse_alt(item).ok_or_else(|| {
                format!("address pattern {t:?}: {item:?} is not an address, a list or a range")
            })?);
        }
        Ok(p)
    }

    /// Whether `ip` matches.
    pub fn matches(&self, ip: IpAddr) -> bool {
        if self.all {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.alts.iter().any(|a| match (a, ip) {
            (Alt::Exact(e), ip) => *e == ip,
            (Alt::V4(ranges), IpAddr::V4(v4)) => v4
                .octets()
                .iter()
                .zip(ranges)
                .all(|(o, (lo, hi))| lo <= o && o <= hi),
            (Alt::V4(_), IpAddr::V6(_)) => false,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_alt(item: &str) -> Option<Alt> {
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(Alt::Exact(ip));
    }
    let segs: Vec<&str> = item.split('.').collect();
    if segs.len() != 4 {
        return None;
    }
    let mut ranges = [(0u8, 255u8); 4];
    for (r, seg) in ranges.iter_mut().zip(segs) {
        *r = match seg.split_once('-') {
            _ if seg == "*" => (0, 255),
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let v = seg.trim().parse().ok()?;
                (v, v)
            }
        };
        if r.0 > r.1 {
            return None;
        }
    }
    Some(Alt::V4(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, ip: &str) -> bool {
        AddrPattern::parse(p).unwrap().matches(ip.parse().unwrap())
    }

    #[test]
    fn apache_forms() {
        assert!(m("*", "10.0.0.1") && m("*.*.*.*", "::1"));
        assert!(m("127.0.0.1", "127.0.0.1") && !m("127.0.0.1", "127.0.0.2"));
        assert!(m("127.0.0.1", "::ffff:127.0.0.1"));
        assert!(m("10.0.0.1,10.0.0.2", "10.0.0.2") && !m("10.0.0.1,10.0.0.2", "10.0.0.3"));
        assert!(m("192.168.0.{1,2}", "192.168.0.2") && !m("192.168.0.{1,2}", "192.168.0.3"));
        assert!(m("192.168.*.*", "192.168.7.9") && !m("192.168.*.*", "192.169.7.9"));
        assert!(m("192.168.1.1-10", "192.168.1.10") && !m("192.168.1.1-10", "192.168.1.11"));
        assert!(m("::1", "::1") && !m("::1", "127.0.0.1"));
        assert!(!m("", "127.0.0.1"));
    }

    #[test]
    fn typos_are_errors() {
        for bad in ["10.0.0", "10.0.0.300", "10.0.0.5-1", "abc", "10.0.0.{1,2"] {
            assert!(AddrPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
