//! Message ids (`docs/remoting-protocol.md` section 5.2).
//!
//! * **offsetMsgId** (`MessageDecoder.createMessageId` / `decodeMessageId`): uppercase hex of
//!   `storeHost IP (4 | 16 bytes) ‖ port (int32) ‖ commitLogOffset (int64)`: 32 hex characters for
//!   IPv4, 56 for IPv6; a length of 32 means IPv4 when decoding.
//! * **UNIQ_KEY** (`MessageClientIDSetter.createUniqID`): uppercase hex of
//!   `client IP (4 | 16) ‖ pid (int16) ‖ seed (int32, Java's class-loader hash code) ‖
//!   ms since the start of the month (int32) ‖ counter (int16)`.

use crate::clock::unix_ms;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};

use super::MessageError;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const MS_PER_DAY: i64 = 86_400_000;

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX_UPPER[usize::from(b >> 4)] as char);
        out.push(HEX_UPPER[usize::from(b & 0xF)] as char);
    }
}

/// Uppercase hex of `bytes` (`UtilAll.bytes2string`).
pub fn to_hex_upper(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Decodes hex (either case); `None` on odd length or a non-hex character.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The offsetMsgId of a stored message: 32 hex characters for an IPv4 store host, 56 for IPv6.
pub fn offset_msg_id(store_host: SocketAddr, commit_log_offset: i64) -> String {
    let mut b = ip_bytes(store_host.ip());
    b.extend_from_slice(&i32::from(store_host.port()).to_be_bytes());
    b.extend_from_slice(&commit_log_offset.to_be_bytes());
    to_hex_upper(&b)
}

/// Reverses [`offset_msg_id`]: the store host and commit log offset.
pub fn decode_offset_msg_id(id: &str) -> Result<(SocketAddr, i64), MessageError> {
    let ip_len = match id.len() {
        32 => 4,
        56 => 16,
        _ => return Err(MessageError::invalid_id(id, "length must be 32 or 56")),
    };
    let b = from_hex(id).ok_or_else(|| MessageError::invalid_id(id, "not hex"))?;
    let ip = if ip_len == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let port = i32::from_be_bytes([b[ip_len], b[ip_len + 1], b[ip_len + 2], b[ip_len + 3]]);
    let port =
        u16::try_from(port).map_err(|_| MessageError::invalid_id(id, "port out of range"))?;
    let mut off = [0u8; 8];
    off.copy_from_slice(&b[ip_len + 4..ip_len + 12]);
    Ok((SocketAddr::new(ip, port), i64::from_be_bytes(off)))
}

/// `(year, month 1-12, day 1-31)` of a day number counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number (from 1970-01-01) of a civil date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Start (ms, UTC) of the month containing `now_ms`.
pub fn month_start_ms(now_ms: i64) -> i64 {
    let days = now_ms.div_euclid(MS_PER_DAY);
    let (_, _, day) = civil_from_days(days);
    (days - (day - 1)) * MS_PER_DAY
}

fn previous_month_start_ms(now_ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(now_ms.div_euclid(MS_PER_DAY));
    let (y, m) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    days_from_civil(y, m, 1) * MS_PER_DAY
}

/// Creates `UNIQ_KEY` ids the way `MessageClientIDSetter.createUniqID` does.
///
/// The clock is a parameter of [`UniqIdGenerator::next_id`], so ids are reproducible in tests.
/// Java counts months in the JVM's default time zone; this generator uses UTC. The counter is
/// shared by all threads and wraps at 65536, as Java's `(short)` cast does.
#[derive(Debug)]
pub struct UniqIdGenerator {
    prefix: String,
    counter: AtomicU16,
}

impl UniqIdGenerator {
    /// A generator for a client at `ip` with process id `pid` (truncated to 16 bits, as Java's
    /// `(short) pid`) and the fixed `seed` Java fills from the class loader's hash code.
    pub fn new(ip: IpAddr, pid: u32, seed: i32) -> Self {
        let mut fixed = ip_bytes(ip);
        fixed.extend_from_slice(&(pid as u16).to_be_bytes());
        fixed.extend_from_slice(&seed.to_be_bytes());
        Self {
            prefix: to_hex_upper(&fixed),
            counter: AtomicU16::new(0),
        }
    }

    /// Starts the counter at `counter` instead of 0.
    pub fn with_counter(self, counter: u16) -> Self {
        self.counter.store(counter, Ordering::Relaxed);
        self
    }

    /// The next id at time `now_ms` (ms since the epoch): 32 hex characters for an IPv4
    /// client, 56 for IPv6.
    pub fn next_id(&self, now_ms: i64) -> String {
        // Up to 31 days of ms overflow an int32; Java's (int) cast keeps the low 32 bits.
        let span = (now_ms - month_start_ms(now_ms)) as u32;
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut s = String::with_capacity(self.prefix.len() + 12);
        s.push_str(&self.prefix);
        push_hex(&mut s, &span.to_be_bytes());
        push_hex(&mut s, &counter.to_be_bytes());
        s
    }

    /// The next id at the current wall-clock time.
    pub fn next_id_now(&self) -> String {
        self.next_id(unix_ms())
    }
}

/// Approximate creation time (ms, UTC months) of a `UNIQ_KEY` id, given the current time, as
/// `MessageClientIDSetter.getNearlyTimeFromID` works it out: the id's month offset is applied to
/// the current month, or to the previous one when that would lie in the future.
pub fn uniq_key_timestamp(id: &str, now_ms: i64) -> Option<i64> {
    let b = from_hex(id)?;
    let ip_len = match b.len() {
        16 => 4,
        28 => 16,
        _ => return None,
    };
    let p = ip_len + 2 + 4;
    let span = i64::from(u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]));
    let start = month_start_ms(now_ms);
    if start + span >= now_ms {
        Some(previous_month_start_ms(now_ms) + span)
    } else {
        Some(start + span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_msg_id_v4() {
        let host: SocketAddr = "127.0.0.1:10911".parse().unwrap();
        // 7F000001 | 00002A9F | 0000000000001234
        let id = offset_msg_id(host, 0x1234);
        assert_eq!(id, "7F00000100002A9F0000000000001234");
        assert_eq!(decode_offset_msg_id(&id).unwrap(), (host, 0x1234));
        assert_eq!(
            decode_offset_msg_id(&id.to_lowercase()).unwrap(),
            (host, 0x1234)
        );
    }

    #[test]
    fn offset_msg_id_v6_and_errors() {
        let host: SocketAddr = "[2001:db8::7]:10911".parse().unwrap();
        let id = offset_msg_id(host, -2);
        assert_eq!(id.len(), 56);
        assert_eq!(
            id,
            "20010DB800000000000000000000000700002A9FFFFFFFFFFFFFFFFE"
        );
        assert_eq!(decode_offset_msg_id(&id).unwrap(), (host, -2));
        assert!(decode_offset_msg_id("").is_err());
        assert!(decode_offset_msg_id("7F00000100002A9F000000000000123").is_err());
        assert!(decode_offset_msg_id("7F00000100002A9F000000000000123G").is_err());
        assert!(decode_offset_msg_id("7F000001FFFFFFFF0000000000001234").is_err());
        assert!(decode_offset_msg_id("ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ").is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        // 2024-02-29 is day 19782.
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for d in [-800_000, -1, 0, 59, 11_016, 19_782, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        // 2024-04-05T17:34:38.901Z -> month starts 2024-04-01T00:00Z = 1711929600000.
        assert_eq!(month_start_ms(1_712_338_478_901), 1_711_929_600_000);
        assert_eq!(
            previous_month_start_ms(1_712_338_478_901),
            1_709_251_200_000
        );
        assert_eq!(
            previous_month_start_ms(1_704_067_200_000),
            1_701_388_800_000
        ); // Jan -> Dec
    }

    #[test]
    fn uniq_ids() {
        let g = UniqIdGenerator::new("127.0.0.1".parse().unwrap(), 0x1_C462, 0x1FE7_686E)
            .with_counter(0xFFFF);
        let now = 1_712_338_478_901; // 408_878_901 ms into April 2024 = 0x185EFF35
        let a = g.next_id(now);
        let b = g.next_id(now + 1);
        assert_eq!(a, "7F000001C4621FE7686E185EFF35FFFF");
        assert_eq!(b, "7F000001C4621FE7686E185EFF360000");
        assert_eq!(uniq_key_timestamp(&a, now + 5_000), Some(now));
        // Seen in the next month: still resolves to the id's month.
        assert_eq!(uniq_key_timestamp(&a, 1_714_600_000_000), Some(now));
        let g6 = UniqIdGenerator::new("::1".parse().unwrap(), 7, -1);
        let id = g6.next_id(now);
        assert_eq!(id.len(), 56);
        assert_eq!(uniq_key_timestamp(&id, now + 1), Some(now));
        assert_eq!(uniq_key_timestamp("XYZ", now), None);
        // Late in a 31-day month the offset exceeds i32::MAX and still round-trips.
        let late = 1_711_929_600_000 - 1; // 2024-03-31T23:59:59.999Z
        let id = g.next_id(late);
        assert_eq!(uniq_key_timestamp(&id, late + 10), Some(late));
    }
}
