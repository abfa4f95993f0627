//! The resource kinds Serval knows, their API groups, and the names the CLI accepts for them.

use std::fmt;

/// Every kind of resource Serval stores.
///
/// All but the last are user-facing resources (Kubernetes- and Calico-shaped);
/// `WorkloadEndpoint` is written by the CNI plugin and not accepted by `serval apply`.
/// IPAM keeps its own records (blocks, affinities, handles) in the `serval-ipam` crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    /// `networking.k8s.io/v1` NetworkPolicy.
    K8sNetworkPolicy,
    Tier,
    /// `projectcalico.org/v3` NetworkPolicy.
    NetworkPolicy,
    GlobalNetworkPolicy,
    HostEndpoint,
    IPPool,
    Node,
    BGPConfiguration,
    BGPPeer,
    FelixConfiguration,
    // Internal record.
    WorkloadEndpoint,
}

/// Static facts about one kind.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub kind: Kind,
    /// The `kind:` string in YAML.
    pub name: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
    /// Whether `serval apply` accepts it (internal records are not).
    pub user: bool,
    /// Lower-case plural; also the key segment in the datastore.
    pub plural: &'static str,
    /// Other accepted CLI names (singular, short forms), all lower case.
    pub aliases: &'static [&'static str],
}

pub const CORE_V1: &str = "v1";
pub const DISCOVERY_V1: &str = "discovery.k8s.io/v1";
pub const NETWORKING_V1: &str = "networking.k8s.io/v1";
pub const CALICO_V3: &str = "projectcalico.org/v3";
pub const SERVAL_V1: &str = "serval.dev/v1";

const fn info(
    kind: Kind,
    name: &'static str,
    api_version: &'static str,
    namespaced: bool,
    user: bool,
    plural: &'static str,
    aliases: &'static [&'static str],
) -> KindInfo {
    KindInfo {
        kind,
        name,
        api_version,
        namespaced,
        user,
        plural,
        aliases,
    }
}

/// The table of every kind. Order is the order `serval get all` would print them and the
/// order an apply stores them in when dependencies matter (namespaces before pods).
pub const KINDS: &[KindInfo] = &[
    info(
        Kind::Namespace,
        "Namespace",
        CORE_V1,
        false,
        true,
        "namespaces",
        &["namespace", "ns"],
    ),
    info(
        Kind::Pod,
        "Pod",
        CORE_V1,
        true,
        true,
        "pods",
        &["pod", "po"],
    ),
    info(
        Kind::Service,
        "Service",
        CORE_V1,
        true,
        true,
        "services",
        &["service", "svc"],
    ),
    info(
        Kind::EndpointSlice,
        "EndpointSlice",
        DISCOVERY_V1,
        true,
        true,
        "endpointslices",
        &["endpointslice"],
    ),
    info(
        Kind::K8sNetworkPolicy,
        "NetworkPolicy",
        NETWORKING_V1,
        true,
        true,
        "networkpolicies.networking.k8s.io",
        &[
            "networkpolicy.networking.k8s.io",
            "netpol",
            "k8snetworkpolicies",
            "knp",
        ],
    ),
    info(
        Kind::Tier,
        "Tier",
        CALICO_V3,
        false,
        true,
        "tiers",
        &["tier"],
    ),
    info(
        Kind::NetworkPolicy,
        "NetworkPolicy",
        CALICO_V3,
        true,
        true,
        "networkpolicies",
        &[
            "networkpolicy",
            "networkpolicies.projectcalico.org",
            "cnp",
            "policy",
            "policies",
        ],
    ),
    info(
        Kind::GlobalNetworkPolicy,
        "GlobalNetworkPolicy",
        CALICO_V3,
        false,
        true,
        "globalnetworkpolicies",
        &[
            "globalnetworkpolicy",
            "gnp",
            "globalpolicy",
            "globalpolicies",
        ],
    ),
    info(
        Kind::HostEndpoint,
        "HostEndpoint",
        CALICO_V3,
        false,
        true,
        "hostendpoints",
        &["hostendpoint", "hep", "heps"],
    ),
    info(
        Kind::IPPool,
        "IPPool",
        CALICO_V3,
        false,
        true,
        "ippools",
        &["ippool", "ipp", "pool", "pools"],
    ),
    info(
        Kind::Node,
        "Node",
        CALICO_V3,
        false,
        true,
        "nodes",
        &["node", "no"],
    ),
    info(
        Kind::BGPConfiguration,
        "BGPConfiguration",
        CALICO_V3,
        false,
        true,
        "bgpconfigurations",
        &["bgpconfiguration", "bgpconfig", "bgpconfigs"],
    ),
    info(
        Kind::BGPPeer,
        "BGPPeer",
        CALICO_V3,
        false,
        true,
        "bgppeers",
        &["bgppeer", "bgpp", "bgpps"],
    ),
    info(
        Kind::FelixConfiguration,
        "FelixConfiguration",
        CALICO_V3,
        false,
        true,
        "felixconfigurations",
        &["felixconfiguration", "felixconfig", "felixconfigs", "fc"],
    ),
    info(
        Kind::WorkloadEndpoint,
        "WorkloadEndpoint",
        SERVAL_V1,
        true,
        false,
        "workloadendpoints",
        &["workloadendpoint", "wep", "weps"],
    ),
];

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        KINDS
            .iter()
            .find(|i| i.kind == self)
            .expect("every Kind has a row in KINDS")
    }

    /// The `kind:` string in YAML.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn api_version(self) -> &'static str {
        self.info().api_version
    }

    pub fn is_namespaced(self) -> bool {
        self.info().namespaced
    }

    /// The kind for an `apiVersion` + `kind` pair from a document.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        KINDS
            .iter()
            .find(|i| i.api_version == api_version && i.name == kind)
            .map(|i| i.kind)
    }

    /// Resolve a name typed on the command line (`pods`, `po`, `Pod`, `gnp`, …).
    /// Case-insensitive. `networkpolicies` alone means the Calico kind, as calicoctl reads it;
    /// `netpol` and `networkpolicies.networking.k8s.io` mean the Kubernetes kind, as kubectl.
    pub fn from_cli_name(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        KINDS
            .iter()
            .find(|i| i.plural == s || i.aliases.contains(&s.as_str()))
            .or_else(|| {
                // The bare kind name (`Pod`, `IPPool`), matched case-insensitively.
                KINDS
                    .iter()
                    .find(|i| i.name.to_ascii_lowercase() == s && i.kind != Kind::K8sNetworkPolicy)
            })
            .map(|i| i.kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_row_and_unique_cli_names() {
        let mut seen = std::collections::HashSet::new();
        for i in KINDS {
            assert_eq!(i.kind.info().name, i.name);
            for n in std::iter::once(&i.plural).chain(i.aliases) {
                assert!(seen.insert(*n), "CLI name {n} used twice");
            }
        }
    }

    #[test]
    fn cli_names_resolve_like_kubectl_and_calicoctl() {
        for (s, k) in [
            ("pods", Kind::Pod),
            ("po", Kind::Pod),
            ("Pod", Kind::Pod),
            ("svc", Kind::Service),
            ("netpol", Kind::K8sNetworkPolicy),
            ("networkpolicies", Kind::NetworkPolicy),
            ("gnp", Kind::GlobalNetworkPolicy),
            ("ippools", Kind::IPPool),
            ("felixconfigurations", Kind::FelixConfiguration),
            ("tiers", Kind::Tier),
            ("ns", Kind::Namespace),
        ] {
            assert_eq!(Kind::from_cli_name(s), Some(k), "{s}");
        }
        assert_eq!(Kind::from_cli_name("nonsense"), None);
    }
}
