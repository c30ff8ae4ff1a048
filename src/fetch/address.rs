//! Which addresses an image URL may lead to: every address that is not on the public internet
//! is refused (loopback, private, link-local with the cloud metadata service, CGNAT, multicast,
//! unspecified, documentation and reserved ranges), IPv4 and IPv6 alike, unless an allow-list
//! (`IMAGE_FETCH_ALLOW_CIDRS`) names it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An address range, `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a range could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address range like 127.0.0.1/32 or ::1/128")]
pub struct CidrError(String);

impl Cidr {
    /// Whether `ip` is inside the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (address, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn prefix_match(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if net[..whole] != ip[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        net[whole] & mask == ip[whole] & mask
    }
}

/// The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96, the well-known NAT64 prefix, carries an IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

/// The kind of a non-public address, as the refusal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restricted {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7.
    Private,
    /// 169.254.169.254 and fd00:ec2::254: cloud instance metadata.
    Metadata,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedNat,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// Documentation, benchmarking, broadcast and reserved ranges.
    Reserved,
}

impl fmt::Display for Restricted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restricted::Loopback => "loopback",
            Restricted::Private => "private",
            Restricted::Metadata => "cloud metadata",
            Restricted::LinkLocal => "link-local",
            Restricted::SharedNat => "carrier-grade NAT",
            Restricted::Multicast => "multicast",
            Restricted::Unspecified => "unspecified",
            Restricted::Reserved => "reserved",
        })
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<Restricted> {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => Restricted::Metadata,
        (0, ..) => Restricted::Unspecified,
        (127, ..) => Restricted::Loopback,
        (10, ..) | (192, 168, _) => Restricted::Private,
        (172, 16..=31, _) => Restricted::Private,
        (169, 254, _) => Restricted::LinkLocal,
        (100, 64..=127, _) => Restricted::SharedNat,
        (224..=239, ..) => Restricted::Multicast,
        (240..=255, ..) => Restricted::Reserved,
        (192, 0, 0) | (192, 0, 2) | (198, 18..=19, _) | (198, 51, 100) | (203, 0, 113) => {
            Restricted::Reserved
        }
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Restricted> {
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => Restricted::Unspecified,
        _ if ip.is_loopback() => Restricted::Loopback,
        _ if s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254] => Restricted::Metadata,
        0xfc00..=0xfdff => Restricted::Private,
        0xfe80..=0xfebf => Restricted::LinkLocal,
        0xff00..=0xffff => Restricted::Multicast,
        // 2001:db8::/32 documentation; ::/96 (IPv4-compatible, deprecated) and 100::/64 discard.
        0x2001 if s[1] == 0x0db8 => Restricted::Reserved,
        0 if s[..6] == [0; 6] => Restricted::Reserved,
        0x0100 if s[1..4] == [0; 3] => Restricted::Reserved,
        _ => return None,
    })
}

/// The rule an address is checked by: refused when restricted, unless an allowed range holds it.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allowed: Vec<Cidr>,
}

impl AddressPolicy {
    /// A policy that also lets `allowed` through (for local development and tests).
    pub fn allowing(allowed: Vec<Cidr>) -> Self {
        Self { allowed }
    }

    /// Why `ip` may not be fetched from, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<Restricted> {
        let kind = classify(ip)?;
        (!self.allowed.iter().any(|c| c.contains(ip))).then_some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<Restricted> {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn every_non_public_ipv4_range_is_classified() {
        use Restricted::*;
        for (ip, expected) in [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.254", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", Metadata),
            ("169.254.1.1", LinkLocal),
            ("100.64.0.1", SharedNat),
            ("100.127.255.255", SharedNat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("0.0.0.0", Unspecified),
            ("255.255.255.255", Reserved),
            ("192.0.2.10", Reserved),
            ("198.18.0.1", Reserved),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "1.1.1.1",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn every_non_public_ipv6_range_is_classified_and_embedded_ipv4_is_unwrapped() {
        use Restricted::*;
        for (ip, expected) in [
            ("::1", Loopback),
            ("::", Unspecified),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fd00:ec2::254", Metadata),
            ("fe80::1", LinkLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:10.0.0.1", Private),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", Metadata),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
        for public in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn an_allowed_range_lets_only_its_addresses_through() {
        let policy = AddressPolicy::allowing(vec!["127.0.0.1/32".parse().unwrap()]);
        assert_eq!(policy.refusal("127.0.0.1".parse().unwrap()), None);
        assert_eq!(
            policy.refusal("127.0.0.2".parse().unwrap()),
            Some(Restricted::Loopback)
        );
        assert_eq!(
            policy.refusal("::ffff:127.0.0.1".parse().unwrap()),
            None,
            "the mapped form of an allowed address"
        );
        assert_eq!(
            policy.refusal("::1".parse().unwrap()),
            Some(Restricted::Loopback)
        );
        let v6 = AddressPolicy::allowing(vec!["::1/128".parse().unwrap()]);
        assert_eq!(v6.refusal("::1".parse().unwrap()), None);
        assert_eq!(
            AddressPolicy::default().refusal("8.8.8.8".parse().unwrap()),
            None
        );
    }

    #[test]
    fn ranges_are_read_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(
            "10.0.0.0/8"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.9.9.9".parse().unwrap())
        );
        assert!(
            !"10.0.0.0/9"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.200.0.1".parse().unwrap())
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "::1/129", "x/8", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
