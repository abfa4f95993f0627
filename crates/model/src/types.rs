//! Value types shared by several kinds: ports, protocols, int-or-string, AS numbers, policy
//! types, and the field-error collector used by semantic validation.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// One semantic problem in a resource: the field path (`spec.ports[1].port`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

/// Collects [`FieldError`]s while walking a resource.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Port (Kubernetes numeric port, 1-65535)

/// A Kubernetes port number, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl Port {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn port_out_of_range(v: impl fmt::Display) -> String {
    format!("{v} is out of range 1-65535")
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number 1-65535")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                if (1..=65535).contains(&v) {
                    Ok(Port(v as u16))
                } else {
                    Err(E::custom(port_out_of_range(v)))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                if (1..=65535).contains(&v) {
                    Ok(Port(v as u16))
                } else {
                    Err(E::custom(port_out_of_range(v)))
                }
            }
        }
        d.deserialize_i64(V)
    }
}

// ---------------------------------------------------------------------------------------------
// IntOrString

/// Kubernetes `IntOrString`: a Service `targetPort` or NetworkPolicy `port`, a number or a
/// named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i32(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(port_out_of_range(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(port_out_of_range(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => i.fmt(f),
            IntOrString::String(s) => s.fmt(f),
        }
    }
}

impl IntOrString {
    /// Checks a port given as IntOrString: a number 1-65535 or an IANA_SVC_NAME.
    pub fn validate_port(&self, path: &str, errs: &mut FieldErrors) {
        match self {
            IntOrString::Int(i) => {
                if !(1..=65535).contains(i) {
                    errs.add(path, port_out_of_range(i));
                }
            }
            IntOrString::String(s) => {
                if let Err(why) = validate_port_name(s) {
                    errs.add(path, why);
                }
            }
        }
    }
}

/// Checks a port name against Kubernetes' IANA_SVC_NAME rule: at most 15 characters, lower-case
/// letters, digits and '-', at least one letter, no leading, trailing or doubled '-'.
pub fn validate_port_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "port name {s:?} {why} (IANA service name: at most 15 of a-z, 0-9 and '-', with at least one letter)"
        ))
    };
    if s.is_empty() {
        return bad("is empty");
    }
    if s.len() > 15 {
        return bad("is longer than 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("has characters other than a-z, 0-9 and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return bad("has no letter");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return bad("starts or ends with '-' or contains '--'");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Protocols

/// A Kubernetes L4 protocol (`TCP`, `UDP`, `SCTP`; case-sensitive as in Kubernetes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Calico rule protocol: a name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`, read
/// case-insensitively and stored in this canonical case) or a number 0-255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalicoProtocol {
    Tcp,
    Udp,
    Icmp,
    IcmpV6,
    Sctp,
    UdpLite,
    Number(u8),
}

const CALICO_PROTOCOL_NAMES: &str = "TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 0-255";

impl CalicoProtocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            CalicoProtocol::Tcp => 6,
            CalicoProtocol::Udp => 17,
            CalicoProtocol::Icmp => 1,
            CalicoProtocol::IcmpV6 => 58,
            CalicoProtocol::Sctp => 132,
            CalicoProtocol::UdpLite => 136,
            CalicoProtocol::Number(n) => n,
        }
    }

    /// Whether rules with this protocol may match ports (TCP, UDP, SCTP, UDPLite).
    pub fn has_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132 | 136)
    }

    /// Whether this is ICMP or ICMPv6 (by name or number).
    pub fn is_icmp(self) -> bool {
        matches!(self.number(), 1 | 58)
    }

    pub fn parse(s: &str) -> Option<CalicoProtocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "tcp" => CalicoProtocol::Tcp,
            "udp" => CalicoProtocol::Udp,
            "icmp" => CalicoProtocol::Icmp,
            "icmpv6" => CalicoProtocol::IcmpV6,
            "sctp" => CalicoProtocol::Sctp,
            "udplite" => CalicoProtocol::UdpLite,
            other => CalicoProtocol::Number(other.parse().ok()?),
        })
    }
}

impl fmt::Display for CalicoProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalicoProtocol::Tcp => f.write_str("TCP"),
            CalicoProtocol::Udp => f.write_str("UDP"),
            CalicoProtocol::Icmp => f.write_str("ICMP"),
            CalicoProtocol::IcmpV6 => f.write_str("ICMPv6"),
            CalicoProtocol::Sctp => f.write_str("SCTP"),
            CalicoProtocol::UdpLite => f.write_str("UDPLite"),
            CalicoProtocol::Number(n) => n.fmt(f),
        }
    }
}

impl Serialize for CalicoProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CalicoProtocol::Number(n) => s.serialize_u8(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for CalicoProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CalicoProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(CALICO_PROTOCOL_NAMES)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CalicoProtocol, E> {
                u8::try_from(v)
                    .map(CalicoProtocol::Number)
                    .map_err(|_| E::custom(format!("protocol {v} is out of range 0-255")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CalicoProtocol, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CalicoProtocol, E> {
                CalicoProtocol::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown protocol {v:?}; use {CALICO_PROTOCOL_NAMES}"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Calico port (number, range or name)

/// A Calico rule port: a number, an inclusive range `min:max`, or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CalicoPort {
    Number(u16),
    Range(u16, u16),
    Named(String),
}

impl CalicoPort {
    pub fn parse(s: &str) -> Result<CalicoPort, String> {
        let num = |p: &str| -> Result<u16, String> {
            let v: u64 = p
                .parse()
                .map_err(|_| format!("{p:?} is not a port number"))?;
            u16::try_from(v).map_err(|_| format!("{v} is out of range 0-65535"))
        };
        if let Some((a, b)) = s.split_once(':') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("port range {s:?}: the start is above the end"));
            }
            Ok(CalicoPort::Range(a, b))
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(CalicoPort::Number(num(s)?))
        } else {
            validate_port_name(s)?;
            Ok(CalicoPort::Named(s.to_string()))
        }
    }

    /// The numeric range this port covers, or `None` for a named port.
    pub fn range(&self) -> Option<(u16, u16)> {
        match self {
            CalicoPort::Number(n) => Some((*n, *n)),
            CalicoPort::Range(a, b) => Some((*a, *b)),
            CalicoPort::Named(_) => None,
        }
    }
}

impl fmt::Display for CalicoPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalicoPort::Number(n) => n.fmt(f),
            CalicoPort::Range(a, b) => write!(f, "{a}:{b}"),
            CalicoPort::Named(s) => s.fmt(f),
        }
    }
}

impl Serialize for CalicoPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CalicoPort::Number(n) => s.serialize_u16(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for CalicoPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CalicoPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number, a range \"min:max\" or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CalicoPort, E> {
                u16::try_from(v)
                    .map(CalicoPort::Number)
                    .map_err(|_| E::custom(format!("{v} is out of range 0-65535")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CalicoPort, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CalicoPort, E> {
                CalicoPort::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// AS number

/// A BGP AS number, 1-4294967295; read from a number, a decimal string or asdot (`1.10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AsNumber(pub u32);

const AS_RANGE: &str = "out of range 1-4294967295";

impl AsNumber {
    pub fn parse(s: &str) -> Result<AsNumber, String> {
        let v: u64 = if let Some((hi, lo)) = s.split_once('.') {
            let hi: u64 = hi
                .parse()
                .map_err(|_| format!("AS number {s:?} is not a number or asdot"))?;
            let lo: u64 = lo
                .parse()
                .map_err(|_| format!("AS number {s:?} is not a number or asdot"))?;
            if hi > 65535 || lo > 65535 {
                return Err(format!("AS number {s:?}: asdot parts must be 0-65535"));
            }
            (hi << 16) | lo
        } else {
            s.parse()
                .map_err(|_| format!("AS number {s:?} is not a number"))?
        };
        AsNumber::from_u64(v)
    }

    fn from_u64(v: u64) -> Result<AsNumber, String> {
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Ok(AsNumber(n)),
            _ => Err(format!("AS number {v} is {AS_RANGE}")),
        }
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AsNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AS number 1-4294967295")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AsNumber, E> {
                if v < 1 {
                    return Err(E::custom(format!("AS number {v} is {AS_RANGE}")));
                }
                AsNumber::from_u64(v as u64).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AsNumber, E> {
                AsNumber::from_u64(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AsNumber, E> {
                AsNumber::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Policy types

/// Direction a policy applies to (`Ingress`, `Egress`); shared by Kubernetes and Calico.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// Checks an order value (Calico `order`): a finite number.
pub(crate) fn validate_order(order: Option<f64>, path: &str, errs: &mut FieldErrors) {
    if let Some(o) = order
        && !o.is_finite()
    {
        errs.add(path, format!("{o} is not a finite number"));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ios(yaml: &str) -> Result<IntOrString, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn int_or_string_reads_both() {
        assert_eq!(ios("8080").unwrap(), IntOrString::Int(8080));
        assert_eq!(ios("http").unwrap(), IntOrString::String("http".into()));
        assert_eq!(ios("\"8080\"").unwrap(), IntOrString::String("8080".into()));
        assert!(ios("[1]").is_err());
    }

    #[test]
    fn port_names() {
        assert!(validate_port_name("http").is_ok());
        assert!(validate_port_name("http-alt2").is_ok());
        for bad in [
            "",
            "8080",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "averyveryverylongname",
            "a_b",
        ] {
            assert!(validate_port_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calico_ports_and_protocols() {
        assert_eq!(CalicoPort::parse("80").unwrap(), CalicoPort::Number(80));
        assert_eq!(
            CalicoPort::parse("80:90").unwrap(),
            CalicoPort::Range(80, 90)
        );
        assert_eq!(
            CalicoPort::parse("http").unwrap(),
            CalicoPort::Named("http".into())
        );
        assert!(CalicoPort::parse("90:80").is_err());
        assert!(CalicoPort::parse("70000").is_err());
        assert!(CalicoPort::parse("1:70000").is_err());
        assert_eq!(
            CalicoProtocol::parse("icmpv6"),
            Some(CalicoProtocol::IcmpV6)
        );
        assert_eq!(CalicoProtocol::parse("17").unwrap().number(), 17);
        assert!(CalicoProtocol::parse("17").unwrap().has_ports());
        assert!(CalicoProtocol::parse("gre").is_none());
        assert!(CalicoProtocol::parse("256").is_none());
    }

    #[test]
    fn as_numbers() {
        assert_eq!(AsNumber::parse("64512").unwrap(), AsNumber(64512));
        assert_eq!(AsNumber::parse("1.10").unwrap(), AsNumber(65546));
        assert!(AsNumber::parse("0").is_err());
        assert!(AsNumber::parse("4294967296").is_err());
        assert_eq!(AsNumber::parse("4294967295").unwrap(), AsNumber(u32::MAX));
        let v: Result<AsNumber, _> = serde_yaml_ng::from_str("0");
        assert!(
            v.unwrap_err()
                .to_string()
                .contains("out of range 1-4294967295")
        );
    }

    proptest! {
        #[test]
        fn int_or_string_round_trips(v in prop_oneof![
            any::<i32>().prop_map(IntOrString::Int),
            "[a-z][a-z0-9-]{0,14}".prop_map(IntOrString::String),
        ]) {
            let json = serde_json::to_string(&v).unwrap();
            let back: IntOrString = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &v);
            let yaml = serde_yaml_ng::to_string(&v).unwrap();
            let back: IntOrString = serde_yaml_ng::from_str(&yaml).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn calico_port_display_parses_back(a: u16, b: u16) {
            let p = if a <= b { CalicoPort::Range(a, b) } else { CalicoPort::Number(a) };
            prop_assert_eq!(CalicoPort::parse(&p.to_string()).unwrap(), p);
        }
    }
}
