//! Named IP sets: a rule refers to a set by [`IpSetId`] so its cost does not grow with the
//! number of endpoints or CIDRs it matches. A set is defined by an [`IpSetSpec`] (a selector
//! and its namespace scope, a CIDR list, or a named port); its id is a stable hash of the
//! definition, so identical definitions share one set and ids survive restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::selector::Selector;
use serval_model::types::Protocol;

use crate::endpoints::{Endpoint, selector_labels};
use crate::model::Model;

/// A stable set id: `"s:"` + 16 hex digits of a hash of the set's definition (`"n:"` for a
/// CIDR set, `"p:"` for a named-port set). At most 18 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpSetId(pub String);

impl std::fmt::Display for IpSetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set's members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpSetMembers {
    /// Networks (endpoint addresses as /32 and /128, or CIDRs). IPv4 and IPv6 mixed; a
    /// dataplane that needs one set per family splits them.
    Nets(BTreeSet<IpNet>),
    /// `(address, protocol, port)` of every selected endpoint exposing the named port.
    NamedPorts(BTreeSet<(IpAddr, Protocol, u16)>),
}

impl IpSetMembers {
    /// True when `addr` is in a `Nets` set.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        match self {
            IpSetMembers::Nets(n) => n.iter().any(|n| n.contains(&addr)),
            IpSetMembers::NamedPorts(_) => false,
        }
    }

    /// True when `(addr, proto, port)` is in a `NamedPorts` set.
    pub fn contains_port(&self, addr: IpAddr, proto: Protocol, port: u16) -> bool {
        match self {
            IpSetMembers::Nets(_) => false,
            IpSetMembers::NamedPorts(p) => p.contains(&(addr, proto, port)),
        }
    }

    /// The members of one family (`v4` true: IPv4), for dataplanes that keep one kernel set
    /// per family.
    pub fn of_family(&self, v4: bool) -> IpSetMembers {
        match self {
            IpSetMembers::Nets(n) => IpSetMembers::Nets(
                n.iter()
                    .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                    .copied()
                    .collect(),
            ),
            IpSetMembers::NamedPorts(p) => IpSetMembers::NamedPorts(
                p.iter()
                    .filter(|(a, _, _)| a.is_ipv4() == v4)
                    .copied()
                    .collect(),
            ),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            IpSetMembers::Nets(n) => n.len(),
            IpSetMembers::NamedPorts(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which namespaces' endpoints a selector set may match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NamespaceScope {
    /// Endpoints in this namespace only (a namespaced policy's selector).
    Namespace(String),
    /// Endpoints in every namespace whose labels match this selector (canonical text).
    /// Host endpoints are included only for a selector such as `global()` (see
    /// [`selects_global_only`]).
    Selector(String),
    /// Every workload endpoint and every host endpoint (a global policy's selector).
    All,
}

/// What defines a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpSetSpec {
    /// The addresses of the endpoints matching `selector` (canonical text) within `scope`.
    Selector {
        selector: String,
        scope: NamespaceScope,
    },
    /// A list of networks.
    Nets(BTreeSet<IpNet>),
    /// `(addr, protocol, port)` for the named port `name`/`protocol` of every endpoint
    /// matching `selector` within `scope`.
    NamedPort {
        selector: String,
        scope: NamespaceScope,
        name: String,
        protocol: Protocol,
    },
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn scope_text(s: &NamespaceScope) -> String {
    match s {
        NamespaceScope::Namespace(ns) => format!("ns={ns}"),
        NamespaceScope::Selector(sel) => format!("nssel={sel}"),
        NamespaceScope::All => "all".to_string(),
    }
}

impl IpSetSpec {
    /// The stable id of this definition.
    pub fn id(&self) -> IpSetId {
        let (prefix, text) = match self {
            IpSetSpec::Selector { selector, scope } => {
                ("s", format!("sel|{}|{selector}", scope_text(scope)))
            }
            IpSetSpec::Nets(nets) => {
                let list: Vec<String> = nets.iter().map(IpNet::to_string).collect();
                ("n", format!("nets|{}", list.join(",")))
            }
            IpSetSpec::NamedPort {
                selector,
                scope,
                name,
                protocol,
            } => (
                "p",
                format!("np|{}|{selector}|{name}|{protocol}", scope_text(scope)),
            ),
        };
        IpSetId(format!("{prefix}:{:016x}", fnv1a(&text)))
    }

    /// A selector set; `selector` is printed in canonical form so equivalent spellings share
    /// a set.
    pub fn selector(selector: &Selector, scope: NamespaceScope) -> IpSetSpec {
        IpSetSpec::Selector {
            selector: selector.to_string(),
            scope,
        }
    }
}

/// True for a namespace selector that picks non-namespaced resources (host endpoints):
/// one that matches in the global scope but not a namespace, such as `global()`. (`all()`
/// means every namespace, as Calico reads it, and leaves host endpoints out.)
pub fn selects_global_only(nssel: &Selector) -> bool {
    let none = BTreeMap::new();
    nssel.matches_global(&none) && !nssel.matches(&none)
}

/// Resolves scopes and selectors against a model once (namespace labels, parsed selectors).
pub(crate) struct MemberIndex<'m> {
    model: &'m Model,
    endpoints: &'m [Endpoint],
    /// `selector_labels` of each endpoint, computed once.
    labels: Vec<BTreeMap<String, String>>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
}

fn parse(sel: &str) -> Selector {
    // Set specs are built from selectors that already parsed (printed canonically), so this
    // cannot fail; an unparsable selector would select nothing.
    Selector::parse(sel).unwrap_or_else(|e| {
        tracing::warn!(selector = sel, error = %e, "ip set selector does not parse; the set is empty");
        Selector::parse("has(serval.invalid/never)").unwrap_or_default()
    })
}

impl<'m> MemberIndex<'m> {
    pub(crate) fn new(model: &'m Model, endpoints: &'m [Endpoint]) -> MemberIndex<'m> {
        let mut ns_labels = BTreeMap::new();
        for ep in endpoints {
            ns_labels
                .entry(ep.namespace.clone())
                .or_insert_with(|| model.namespace_labels(&ep.namespace));
        }
        MemberIndex {
            model,
            endpoints,
            labels: endpoints.iter().map(selector_labels).collect(),
            ns_labels,
        }
    }

    fn in_scope(&self, ep: &Endpoint, scope: &NamespaceScope, nssel: Option<&Selector>) -> bool {
        match scope {
            NamespaceScope::Namespace(ns) => ep.namespace == *ns,
            NamespaceScope::All => true,
            NamespaceScope::Selector(_) => nssel.is_some_and(|s| {
                self.ns_labels
                    .get(&ep.namespace)
                    .is_some_and(|l| s.matches(l))
            }),
        }
    }

    fn selected<'a>(
        &'a self,
        selector: &str,
        scope: &NamespaceScope,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let sel = parse(selector);
        let nssel = match scope {
            NamespaceScope::Selector(s) => Some(parse(s)),
            _ => None,
        };
        let scope = scope.clone();
        self.endpoints
            .iter()
            .zip(&self.labels)
            .filter(move |(ep, labels)| {
                self.in_scope(ep, &scope, nssel.as_ref()) && sel.matches(labels)
            })
            .map(|(ep, _)| ep)
    }

    /// Host endpoint addresses a selector set includes (global scope, or a namespace
    /// selector that matches `global()`).
    fn host_addrs(&self, selector: &str, scope: &NamespaceScope) -> Vec<IpAddr> {
        let include = match scope {
            NamespaceScope::All => true,
            NamespaceScope::Namespace(_) => false,
            NamespaceScope::Selector(s) => selects_global_only(&parse(s)),
        };
        if !include {
            return Vec::new();
        }
        let sel = parse(selector);
        self.model
            .host_endpoints
            .values()
            .filter(|h| sel.matches_global(&h.metadata.labels))
            .flat_map(|h| h.spec.expected_ips.iter().copied())
            .collect()
    }

    /// The members of a set.
    pub(crate) fn members(&self, spec: &IpSetSpec) -> IpSetMembers {
        match spec {
            IpSetSpec::Nets(n) => IpSetMembers::Nets(n.clone()),
            IpSetSpec::Selector { selector, scope } => {
                let mut nets: BTreeSet<IpNet> = self
                    .selected(selector, scope)
                    .flat_map(|ep| ep.addrs.iter().map(|a| IpNet::from(*a)))
                    .collect();
                nets.extend(
                    self.host_addrs(selector, scope)
                        .into_iter()
                        .map(IpNet::from),
                );
                IpSetMembers::Nets(nets)
            }
            IpSetSpec::NamedPort {
                selector,
                scope,
                name,
                protocol,
            } => IpSetMembers::NamedPorts(
                self.selected(selector, scope)
                    .filter_map(|ep| ep.named_port(name, *protocol).map(|p| (ep, p)))
                    .flat_map(|(ep, port)| ep.addrs.iter().map(move |a| (*a, *protocol, port)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_shared_by_equal_definitions() {
        let a = IpSetSpec::selector(
            &Selector::parse("app=='web'").unwrap(),
            NamespaceScope::Namespace("x".into()),
        );
        let b = IpSetSpec::selector(
            &Selector::parse("  app == \"web\" ").unwrap(),
            NamespaceScope::Namespace("x".into()),
        );
        assert_eq!(a.id(), b.id());
        assert!(a.id().0.starts_with("s:"));
        assert_eq!(a.id().0.len(), 18);
        let c = IpSetSpec::selector(
            &Selector::parse("app=='web'").unwrap(),
            NamespaceScope::Namespace("y".into()),
        );
        assert_ne!(a.id(), c.id());
        let mixed = IpSetMembers::Nets(
            ["10.0.0.1/32", "fd00::1/128"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        assert_eq!(mixed.of_family(true).len(), 1);
        assert!(
            mixed
                .of_family(false)
                .contains_addr("fd00::1".parse().unwrap())
        );
        assert!(
            !mixed
                .of_family(false)
                .contains_addr("10.0.0.1".parse().unwrap())
        );
        // Pinned: the id must not change between builds (dataplanes keep sets across
        // restarts by id).
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
