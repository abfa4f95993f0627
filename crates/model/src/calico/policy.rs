//! Calico NetworkPolicy (namespaced) and GlobalNetworkPolicy (cluster-wide). Both share the
//! rule model: action, protocol, ICMP, and source/destination entity matches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::check_selector;
use super::tier::DEFAULT_TIER;
use crate::meta::{ObjectMeta, check_dns1123_label};
use crate::net::{self, IpFamily, IpNet};
use crate::types::{CalicoPort, CalicoProtocol, FieldErrors, PolicyType, validate_order};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
}

/// The spec of both policy kinds. `namespaceSelector`, `doNotTrack`, `preDNAT` and
/// `applyOnForward` are only valid on GlobalNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Defaults to `default`.
    #[serde(default)]
    pub tier: String,
    /// Lower first within the tier; unset sorts last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to; empty means `all()`.
    #[serde(default)]
    pub selector: String,
    /// Global policies: restricts `selector` to endpoints in matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Defaulted at parse time as Calico does: `Ingress`, plus `Egress` when there are egress
    /// rules (and only `Egress` when there are egress rules but no ingress rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub do_not_track: bool,
    #[serde(
        default,
        rename = "preDNAT",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub pre_dnat: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub apply_on_forward: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    /// 4 or 6: restrict the rule to one IP family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<CalicoProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<CalicoProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "notICMP")]
    pub not_icmp: Option<IcmpMatch>,
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    /// ICMP type 0-254; unset matches any type.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<i64>,
    /// ICMP code 0-255; requires `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
}

/// Source or destination match. Every set field must match (AND).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// CIDRs or bare IPs, normalised to networks.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "net::serde_network_list"
    )]
    pub nets: Vec<IpNet>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "net::serde_network_list"
    )]
    pub not_nets: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// Selects namespaces by their labels; endpoints in them match. On a namespaced policy an
    /// unset namespaceSelector with a selector means "this namespace".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<CalicoPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<CalicoPort>,
}

impl EntityRule {
    pub fn is_empty(&self) -> bool {
        *self == EntityRule::default()
    }
}

impl PolicySpec {
    pub fn applies_to_ingress(&self) -> bool {
        self.types.contains(&PolicyType::Ingress)
    }

    pub fn applies_to_egress(&self) -> bool {
        self.types.contains(&PolicyType::Egress)
    }

    pub(crate) fn apply_defaults(&mut self) {
        if self.tier.is_empty() {
            self.tier = DEFAULT_TIER.to_string();
        }
        if self.types.is_empty() {
            if !self.ingress.is_empty() || self.egress.is_empty() {
                self.types.push(PolicyType::Ingress);
            }
            if !self.egress.is_empty() {
                self.types.push(PolicyType::Egress);
            }
        }
    }

    pub(crate) fn validate(&self, global: bool, errs: &mut FieldErrors) {
        if let Err(why) = check_dns1123_label(&self.tier) {
            errs.add("spec.tier", why);
        }
        validate_order(self.order, "spec.order", errs);
        check_selector(&self.selector, "spec.selector", errs);
        if let Some(ns) = &self.namespace_selector {
            if global {
                check_selector(ns, "spec.namespaceSelector", errs);
            } else {
                errs.add(
                    "spec.namespaceSelector",
                    "only GlobalNetworkPolicy has spec.namespaceSelector; a NetworkPolicy applies in its own namespace",
                );
            }
        }
        if !global {
            for (set, field) in [
                (self.do_not_track, "doNotTrack"),
                (self.pre_dnat, "preDNAT"),
                (self.apply_on_forward, "applyOnForward"),
            ] {
                if set {
                    errs.add(format!("spec.{field}"), "only valid on GlobalNetworkPolicy");
                }
            }
        }
        if self.do_not_track && self.pre_dnat {
            errs.add("spec.preDNAT", "preDNAT and doNotTrack cannot both be true");
        }
        if (self.do_not_track || self.pre_dnat) && !self.apply_on_forward {
            errs.add(
                "spec.applyOnForward",
                "must be true when doNotTrack or preDNAT is true",
            );
        }
        if self.pre_dnat && !self.egress.is_empty() {
            errs.add("spec.egress", "preDNAT policies cannot have egress rules");
        }
        let mut seen = Vec::new();
        for (i, t) in self.types.iter().enumerate() {
            if seen.contains(t) {
                errs.add(format!("spec.types[{i}]"), format!("duplicate {t:?}"));
            }
            seen.push(*t);
        }
        if !self.ingress.is_empty() && !self.applies_to_ingress() {
            errs.add(
                "spec.ingress",
                "has rules but spec.types does not include Ingress",
            );
        }
        if !self.egress.is_empty() && !self.applies_to_egress() {
            errs.add(
                "spec.egress",
                "has rules but spec.types does not include Egress",
            );
        }
        for (i, r) in self.ingress.iter().enumerate() {
            r.validate(&format!("spec.ingress[{i}]"), errs);
        }
        for (i, r) in self.egress.iter().enumerate() {
            r.validate(&format!("spec.egress[{i}]"), errs);
        }
    }
}

impl Rule {
    fn validate(&self, p: &str, errs: &mut FieldErrors) {
        let mut family: Option<IpFamily> = match self.ip_version {
            None => None,
            Some(4) => Some(IpFamily::V4),
            Some(6) => Some(IpFamily::V6),
            Some(v) => {
                errs.add(format!("{p}.ipVersion"), format!("{v} must be 4 or 6"));
                None
            }
        };
        for (icmp, field) in [(&self.icmp, "icmp"), (&self.not_icmp, "notICMP")] {
            let Some(icmp) = icmp else { continue };
            let proto = self.protocol.filter(|p| p.is_icmp());
            match proto {
                None => errs.add(
                    format!("{p}.{field}"),
                    "ICMP matches need protocol ICMP or ICMPv6",
                ),
                Some(pr) => {
                    let fam = if pr.number() == 1 {
                        IpFamily::V4
                    } else {
                        IpFamily::V6
                    };
                    family.get_or_insert(fam);
                }
            }
            if let Some(t) = icmp.type_
                && !(0..=254).contains(&t)
            {
                errs.add(
                    format!("{p}.{field}.type"),
                    format!("{t} is out of range 0-254"),
                );
            }
            match (icmp.type_, icmp.code) {
                (None, Some(_)) => errs.add(format!("{p}.{field}.code"), "requires type"),
                (_, Some(c)) if !(0..=255).contains(&c) => errs.add(
                    format!("{p}.{field}.code"),
                    format!("{c} is out of range 0-255"),
                ),
                _ => {}
            }
        }
        if let Some(pr) = self.protocol
            && pr.is_icmp()
        {
            let fam = if pr.number() == 1 {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            match family {
                Some(f) if f != fam => errs.add(
                    format!("{p}.protocol"),
                    format!(
                        "{pr} does not match ipVersion {}",
                        self.ip_version.unwrap_or(0)
                    ),
                ),
                _ => family = Some(fam),
            }
        }
        for (e, side) in [(&self.source, "source"), (&self.destination, "destination")] {
            let ep = format!("{p}.{side}");
            e.validate(&ep, errs);
            for (nets, field) in [(&e.nets, "nets"), (&e.not_nets, "notNets")] {
                for (k, n) in nets.iter().enumerate() {
                    let f = IpFamily::of_net(n);
                    match family {
                        Some(want) if want != f => errs.add(
                            format!("{ep}.{field}[{k}]"),
                            format!("{n} is {f} but the rule is {want}; split IPv4 and IPv6 into separate rules or drop ipVersion"),
                        ),
                        _ => family = Some(f),
                    }
                }
            }
            for (ports, field) in [(&e.ports, "ports"), (&e.not_ports, "notPorts")] {
                if ports.is_empty() {
                    continue;
                }
                if !self.protocol.is_some_and(|pr| pr.has_ports()) {
                    errs.add(
                        format!("{ep}.{field}"),
                        "ports need protocol TCP, UDP, SCTP or UDPLite on the rule",
                    );
                }
            }
        }
    }
}

impl EntityRule {
    fn validate(&self, p: &str, errs: &mut FieldErrors) {
        for (sel, field) in [
            (&self.selector, "selector"),
            (&self.not_selector, "notSelector"),
            (&self.namespace_selector, "namespaceSelector"),
        ] {
            if let Some(s) = sel {
                check_selector(s, &format!("{p}.{field}"), errs);
            }
        }
    }
}

impl NetworkPolicy {
    pub(crate) fn apply_defaults(&mut self) {
        self.spec.apply_defaults();
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        self.spec.validate(false, errs);
    }
}

impl GlobalNetworkPolicy {
    pub(crate) fn apply_defaults(&mut self) {
        self.spec.apply_defaults();
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        self.spec.validate(true, errs);
    }
}
