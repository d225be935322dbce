//! Value types whose constructors enforce the language's rules, so a value
//! that exists is valid: names, label keys and values, ports, port ranges,
//! modes, verdicts, address prefixes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use enforcer_common::{protocol::Protocol, verdict::Action, workload};
use ipnet::IpNet;

/// Entity names that the language reserves.
pub const RESERVED_NAMES: [&str; 3] = ["world", "host", "any"];

/// Longest name, label key or label value, in bytes.
pub const MAX_LEN: usize = 63;

/// A workload, peer or policy name: `[a-z0-9][a-z0-9-]*`, at most 63
/// bytes, not a reserved entity name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a name cannot be empty".into());
        }
        if s.len() > MAX_LEN {
            return Err(format!("name `{s}` is longer than {MAX_LEN} bytes"));
        }
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(format!(
                "invalid name `{s}`: use lowercase letters, digits and `-`, starting with a letter or digit"
            ));
        }
        if RESERVED_NAMES.contains(&s) {
            return Err(format!(
                "`{s}` is a reserved entity name (world, host, any): choose another name"
            ));
        }
        Ok(Name(s.to_owned()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A label key: `[a-z0-9][a-z0-9._/-]*`, at most 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelKey(String);

impl LabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_LEN {
            return Err(format!("label key `{s}` is longer than {MAX_LEN} bytes"));
        }
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
        });
        if !first_ok || !rest_ok {
            return Err(format!(
                "invalid label key `{s}`: use lowercase letters, digits and `._/-`, starting with a letter or digit"
            ));
        }
        Ok(LabelKey(s.to_owned()))
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A label value: any string of at most 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(String);

impl LabelValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_LEN {
            return Err(format!(
                "label value `{s}` is longer than {MAX_LEN} bytes: shorten it"
            ));
        }
        Ok(LabelValue(s.to_owned()))
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service port, 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    pub fn new(n: u64) -> Result<Port, String> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(format!("port {n} is out of range: ports are 1 to 65535")),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// An inclusive port range with `low <= high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    low: Port,
    high: Port,
}

impl PortRange {
    pub fn new(low: Port, high: Port) -> Result<PortRange, String> {
        if low > high {
            return Err(format!(
                "port range {}-{} is empty: write the lower port first ({}-{})",
                low.0, high.0, high.0, low.0
            ));
        }
        Ok(PortRange { low, high })
    }

    pub fn single(port: Port) -> PortRange {
        PortRange {
            low: port,
            high: port,
        }
    }

    pub fn low(self) -> u16 {
        self.low.0
    }

    pub fn high(self) -> u16 {
        self.high.0
    }
}

/// A transport protocol that has ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => Protocol::Tcp as u8,
            Proto::Udp => Protocol::Udp as u8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn parse(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol `{s}`: use `tcp` or `udp`")),
        }
    }
}

/// One item of a rule's `ports` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// `PORT/PROTO` or `LO-HI/PROTO`.
    Range(Proto, PortRange),
    /// `tcp` or `udp`: every port of the protocol.
    All(Proto),
    /// `icmp`: ICMP and ICMPv6 echo.
    Icmp,
}

impl PortSpec {
    /// The key protocol and the inclusive key-port interval this item
    /// covers. ICMP echo is port 0 of [`Protocol::Icmp`].
    pub fn interval(self) -> (u8, u16, u16) {
        match self {
            PortSpec::Range(p, r) => (p.number(), r.low(), r.high()),
            PortSpec::All(p) => (p.number(), 0, u16::MAX),
            PortSpec::Icmp => (Protocol::Icmp as u8, 0, 0),
        }
    }

    /// What an omitted `ports` means: every protocol and port.
    pub fn everything() -> [PortSpec; 3] {
        [
            PortSpec::All(Proto::Tcp),
            PortSpec::All(Proto::Udp),
            PortSpec::Icmp,
        ]
    }
}

const PORT_FORMS: &str = "use \"PORT/PROTO\", \"LOW-HIGH/PROTO\", \"tcp\", \"udp\" or \"icmp\"";

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => return Ok(PortSpec::All(Proto::Tcp)),
            "udp" => return Ok(PortSpec::All(Proto::Udp)),
            "icmp" => return Ok(PortSpec::Icmp),
            _ => {}
        }
        let Some((ports, proto)) = s.split_once('/') else {
            return Err(format!("invalid port `{s}`: {PORT_FORMS}"));
        };
        let proto = Proto::parse(proto)?;
        let range = match ports.split_once('-') {
            Some((lo, hi)) => PortRange::new(parse_port(lo, s)?, parse_port(hi, s)?)?,
            None => PortRange::single(parse_port(ports, s)?),
        };
        Ok(PortSpec::Range(proto, range))
    }
}

fn parse_port(digits: &str, whole: &str) -> Result<Port, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port `{whole}`: {PORT_FORMS}"));
    }
    // Many digits overflow u64; they are out of range either way.
    let n = digits.parse::<u64>().unwrap_or(u64::MAX);
    Port::new(n).map_err(|_| format!("port {digits} is out of range: ports are 1 to 65535"))
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Range(p, r) if r.low() == r.high() => write!(f, "{}/{}", r.low(), p.as_str()),
            PortSpec::Range(p, r) => write!(f, "{}-{}/{}", r.low(), r.high(), p.as_str()),
            PortSpec::All(p) => f.write_str(p.as_str()),
            PortSpec::Icmp => f.write_str("icmp"),
        }
    }
}

/// One concrete service port of a connection: `PORT/PROTO` or `icmp`, as
/// expectations and `enforcer explain` take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    /// Protocol::Tcp, Protocol::Udp or Protocol::Icmp.
    pub protocol: u8,
    /// 0 for ICMP echo.
    pub port: u16,
}

impl FromStr for ServicePort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<PortSpec>() {
            Ok(PortSpec::Icmp) => Ok(ServicePort {
                protocol: Protocol::Icmp as u8,
                port: 0,
            }),
            Ok(PortSpec::Range(p, r)) if r.low() == r.high() => Ok(ServicePort {
                protocol: p.number(),
                port: r.low(),
            }),
            Ok(_) => Err(format!(
                "`{s}` is not a single port: use \"PORT/PROTO\" (e.g. \"443/tcp\") or \"icmp\""
            )),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Protocol::from_raw(self.protocol) {
            Some(Protocol::Tcp) => write!(f, "{}/tcp", self.port),
            Some(Protocol::Udp) => write!(f, "{}/udp", self.port),
            Some(Protocol::Icmp) => f.write_str("icmp"),
            None => write!(f, "{}/proto-{}", self.port, self.protocol),
        }
    }
}

/// A workload's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
    Off,
}

impl Mode {
    /// The data plane's [`workload::Mode`] byte.
    pub fn number(self) -> u8 {
        match self {
            Mode::Enforce => workload::Mode::Enforce as u8,
            Mode::Audit => workload::Mode::Audit as u8,
            Mode::Off => workload::Mode::Off as u8,
        }
    }

    /// The mode of a data plane [`workload::Mode`] byte; `None` for any
    /// other number.
    pub fn from_number(number: u8) -> Option<Mode> {
        Some(match workload::Mode::from_raw(number)? {
            workload::Mode::Enforce => Mode::Enforce,
            workload::Mode::Audit => Mode::Audit,
            workload::Mode::Off => Mode::Off,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Off => "off",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            "off" => Ok(Mode::Off),
            _ => Err(format!(
                "invalid mode `{s}`: use \"enforce\", \"audit\" or \"off\""
            )),
        }
    }
}

/// An expected or computed verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    /// The verdict of a data-plane action (ACTION_*): an audited denial is
    /// a denial.
    pub fn from_action(action: u8) -> Verdict {
        if action == Action::Allow as u8 {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CIDR, or a host address without a length.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        let net: IpNet = s.parse().map_err(|_| {
            format!("invalid CIDR `{s}`: write ADDRESS/LEN, e.g. \"203.0.113.0/24\" or \"2001:db8::/32\"")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "CIDR `{s}` has bits set after its /{} prefix: did you mean \"{}\"?",
                net.prefix_len(),
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let addr: IpAddr = s.parse().map_err(|_| {
            format!(
                "invalid address `{s}`: write an IP address or ADDRESS/LEN, e.g. \"198.51.100.17\""
            )
        })?;
        Ok(IpNet::from(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_numbers() {
        for mode in [Mode::Enforce, Mode::Audit, Mode::Off] {
            assert_eq!(Mode::from_number(mode.number()), Some(mode));
        }
        assert_eq!(Mode::from_number(u8::MAX), None);
    }

    #[test]
    fn names_follow_the_charset_and_reserved_words() {
        assert!("web".parse::<Name>().is_ok());
        assert!("vendor-support".parse::<Name>().is_ok());
        assert!("9lives".parse::<Name>().is_ok());
        for bad in [
            "",
            "Web",
            "-web",
            "we_b",
            "world",
            "host",
            "any",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn label_keys_allow_dots_slashes_and_underscores() {
        assert!("app.kubernetes.io/name".parse::<LabelKey>().is_ok());
        assert!("a_b".parse::<LabelKey>().is_ok());
        for bad in ["", "App", ".a", "a b", &"k".repeat(64)] {
            assert!(bad.parse::<LabelKey>().is_err(), "{bad} accepted");
        }
        assert!("v".repeat(63).parse::<LabelValue>().is_ok());
        assert!("v".repeat(64).parse::<LabelValue>().is_err());
    }

    #[test]
    fn port_specs_parse_every_form() {
        let spec = |s: &str| s.parse::<PortSpec>().map(PortSpec::interval);
        assert_eq!(spec("443/tcp"), Ok((Protocol::Tcp as u8, 443, 443)));
        assert_eq!(spec("8000-8100/udp"), Ok((Protocol::Udp as u8, 8000, 8100)));
        assert_eq!(spec("tcp"), Ok((Protocol::Tcp as u8, 0, 65535)));
        assert_eq!(spec("icmp"), Ok((Protocol::Icmp as u8, 0, 0)));
        for bad in [
            "70000/tcp",
            "0/tcp",
            "80/sctp",
            "80",
            "9-8/tcp",
            "-8/tcp",
            "a/tcp",
            "99999999999999999999999/tcp",
        ] {
            assert!(spec(bad).is_err(), "{bad} accepted");
        }
        assert!(spec("70000/tcp").unwrap_err().contains("out of range"));
        assert!(spec("9-8/tcp").unwrap_err().contains("8-9"));
    }

    #[test]
    fn service_ports_are_single() {
        assert_eq!(
            "5432/tcp".parse::<ServicePort>(),
            Ok(ServicePort {
                protocol: Protocol::Tcp as u8,
                port: 5432
            })
        );
        assert!("1-2/tcp".parse::<ServicePort>().is_err());
        assert!("tcp".parse::<ServicePort>().is_err());
        assert_eq!(
            "icmp".parse::<ServicePort>().map(|p| p.to_string()),
            Ok("icmp".into())
        );
    }

    #[test]
    fn cidrs_accept_host_addresses_and_reject_host_bits() {
        assert_eq!(
            parse_cidr("198.51.100.17").unwrap().to_string(),
            "198.51.100.17/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!(parse_cidr("203.0.113.0/24").is_ok());
        assert!(
            parse_cidr("203.0.113.1/24")
                .unwrap_err()
                .contains("203.0.113.0/24")
        );
        assert!(parse_cidr("203.0.113.0/33").is_err());
        assert!(parse_cidr("300.0.0.0/8").is_err());
    }
}
