//! The address a server tells its clients (route answers, REGISTER_BROKER), and the VIP channel
//! beside it.
//!
//! A server bound to every address (`0.0.0.0`, `::`) cannot advertise what it bound: clients
//! told `0.0.0.0:10911` connect to themselves. In a pod the reachable address is the pod's IP,
//! which Kubernetes hands over as `POD_IP` (downward API, `status.podIP`).

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

/// The environment variable that names the pod's address.
pub const POD_IP_ENV: &str = "POD_IP";

/// Why no address could be advertised.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdvertiseError {
    #[error(
        "listening on {bound} (every address) gives clients no address they can reach: pass \
         --advertise HOST:PORT (the address clients should connect to), or set {POD_IP_ENV}"
    )]
    Unspecified { bound: SocketAddr },
    #[error("{POD_IP_ENV}={value:?} is not an IP address")]
    BadPodIp { value: String },
    #[error("--advertise {value:?}: expected HOST:PORT, [IPv6]:PORT or IP:PORT with a port from 1 to 65535")]
    BadAdvertise { value: String },
}

/// What to advertise: `explicit` (`--advertise`) when given; else the bound address, unless it
/// is unspecified, then `pod_ip` (the value of [`POD_IP_ENV`]) with the bound port; else an error.
pub fn advertised(
    explicit: Option<&str>,
    bound: SocketAddr,
    pod_ip: Option<&str>,
) -> Result<String, AdvertiseError> {
    if let Some(value) = explicit {
        return check_host_port(value).map(|()| value.to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    match pod_ip.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => match v.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, bound.port()).to_string()),
            Err(_) => Err(AdvertiseError::BadPodIp {
                value: v.to_owned(),
            }),
        },
        None => Err(AdvertiseError::Unspecified { bound }),
    }
}

/// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`, port 1..=65535.
fn check_host_port(value: &str) -> Result<(), AdvertiseError> {
    let bad = || AdvertiseError::BadAdvertise {
        value: value.to_owned(),
    };
    if value.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.contains(':')
        && !host.starts_with('[')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The VIP channel's port for a server on `port`: Apache's 4.x clients with `vipChannelEnabled`
/// connect to the advertised port minus 2 (`MixAll.brokerVIPChannel`). None when there is none
/// (port 0, an ephemeral port with no agreed pair, or ports 1 and 2).
pub fn vip_port(port: u16) -> Option<u16> {
    (port > 2).then(|| port - 2)
}

/// The `host:port` a client with `vipChannelEnabled` derives from an advertised address.
pub fn vip_address(advertised: &str) -> Option<String> {
    let (host, port) = advertised.rsplit_once(':')?;
    let port = vip_port(port.parse().ok()?)?;
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn explicit_wins_and_is_checked() {
        let b = sa("0.0.0.0:9876");
        assert_eq!(
            advertised(Some("pod-1.ns.svc:9876"), b, None).unwrap(),
            "pod-1.ns.svc:9876"
        );
        assert_eq!(
            advertised(Some("[fd00::5]:9876"), b, Some("10.1.1.1")).unwrap(),
            "[fd00::5]:9876"
        );
        assert_eq!(
            advertised(Some("10.0.0.9:1"), b, None).unwrap(),
            "10.0.0.9:1"
        );
        for bad in [
            "pod",
            "pod:0",
            "pod:99999",
            ":9876",
            "::1:9876",
            "a b:1",
            "[x]:1",
        ] {
            assert!(
                matches!(
                    advertised(Some(bad), b, None),
                    Err(AdvertiseError::BadAdvertise { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn bound_address_unless_unspecified() {
        assert_eq!(
            advertised(None, sa("127.0.0.1:9876"), Some("10.1.1.1")).unwrap(),
            "127.0.0.1:9876"
        );
        assert_eq!(
            advertised(None, sa("0.0.0.0:9876"), Some("10.1.1.1")).unwrap(),
            "10.1.1.1:9876"
        );
        assert_eq!(
            advertised(None, sa("[::]:10911"), Some("fd00::7")).unwrap(),
            "[fd00::7]:10911"
        );
        let err = advertised(None, sa("0.0.0.0:9876"), None).unwrap_err();
        assert_eq!(
            err,
            AdvertiseError::Unspecified {
                bound: sa("0.0.0.0:9876")
            }
        );
        assert!(err.to_string().contains("--advertise"), "{err}");
        assert!(advertised(None, sa("0.0.0.0:9876"), Some(" ")).is_err());
        assert_eq!(
            advertised(None, sa("0.0.0.0:9876"), Some("pod")),
            Err(AdvertiseError::BadPodIp {
                value: "pod".into()
            })
        );
    }

    #[test]
    fn vip_is_two_below() {
        assert_eq!(vip_port(10911), Some(10909));
        assert_eq!(vip_port(0), None);
        assert_eq!(vip_port(2), None);
        assert_eq!(
            vip_address("10.0.0.1:10911").as_deref(),
            Some("10.0.0.1:10909")
        );
        assert_eq!(vip_address("[::1]:9876").as_deref(), Some("[::1]:9874"));
        assert_eq!(
            vip_address("broker-0.svc:10911").as_deref(),
            Some("broker-0.svc:10909")
        );
        assert_eq!(vip_address("nope"), None);
    }
}
