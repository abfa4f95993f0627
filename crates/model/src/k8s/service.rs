//! `v1` Service: ClusterIP, NodePort and LoadBalancer services with Kubernetes' defaulting
//! and validation rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::labelselector::{validate_label_key, validate_label_value};
use crate::meta::{ObjectMeta, check_dns1123_label};
use crate::net::IpFamily;
use crate::types::{FieldErrors, IntOrString, Port, Protocol};

/// Default NodePort range of kube-apiserver (`--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Default ClientIP affinity timeout (3 hours), as Kubernetes sets it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceIpFamily {
    IPv4,
    IPv6,
}

impl ServiceIpFamily {
    pub fn family(self) -> IpFamily {
        match self {
            ServiceIpFamily::IPv4 => IpFamily::V4,
            ServiceIpFamily::IPv6 => IpFamily::V6,
        }
    }

    fn of(addr: &IpAddr) -> ServiceIpFamily {
        if addr.is_ipv4() {
            ServiceIpFamily::IPv4
        } else {
            ServiceIpFamily::IPv6
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// `"None"` (headless), an address, or unset (allocated when stored).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// One address per family; `clusterIPs[0]` equals `clusterIP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<ServiceIpFamily>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<IpFamilyPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Pods with all these labels back the service; empty means no automatic endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "externalIPs")]
    pub external_ips: Vec<IpAddr>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// Defaults to `Cluster` for NodePort and LoadBalancer services; unset otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_not_ready_addresses: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: Port,
    /// Number or container port name; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<Port>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl ServiceSpec {
    /// Headless: `clusterIP: None`.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
    }

    /// The allocated cluster addresses (empty when headless or not yet allocated).
    pub fn cluster_addrs(&self) -> Vec<IpAddr> {
        self.cluster_ips
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Whether node ports are opened for this service.
    pub fn has_node_ports(&self) -> bool {
        matches!(
            self.type_,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    }

    /// ClientIP affinity timeout, when affinity is on.
    pub fn affinity_timeout_seconds(&self) -> Option<u32> {
        if self.session_affinity != SessionAffinity::ClientIP {
            return None;
        }
        let t = self
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok());
        Some(t.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS))
    }
}

impl ServicePort {
    /// The target port, `port` when unset.
    pub fn target(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(i32::from(self.port.0)))
    }
}

impl Service {
    /// Kubernetes API-server defaulting: protocol TCP, targetPort = port, clusterIPs from
    /// clusterIP, ipFamilies from clusterIPs, single-stack policy, traffic policies, affinity
    /// timeout.
    pub(crate) fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        if s.cluster_ip.as_deref() == Some("") {
            // "" means "allocate one", as in Kubernetes.
            s.cluster_ip = None;
        }
        for p in &mut s.ports {
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(i32::from(p.port.0)));
            }
        }
        if let Some(ip) = &s.cluster_ip
            && !ip.is_empty()
            && s.cluster_ips.is_empty()
        {
            s.cluster_ips.push(ip.clone());
        }
        if s.cluster_ip.is_none()
            && let Some(first) = s.cluster_ips.first()
        {
            s.cluster_ip = Some(first.clone());
        }
        if s.ip_families.is_empty() {
            s.ip_families = s
                .cluster_ips
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|a| ServiceIpFamily::of(&a))
                .collect();
        }
        if s.ip_family_policy.is_none() && !s.ip_families.is_empty() {
            s.ip_family_policy = Some(if s.ip_families.len() > 1 {
                IpFamilyPolicy::RequireDualStack
            } else {
                IpFamilyPolicy::SingleStack
            });
        }
        if s.has_node_ports() && s.external_traffic_policy.is_none() {
            s.external_traffic_policy = Some(TrafficPolicy::Cluster);
        }
        if s.internal_traffic_policy.is_none() {
            s.internal_traffic_policy = Some(TrafficPolicy::Cluster);
        }
        if s.session_affinity == SessionAffinity::ClientIP {
            let cfg = s
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let cip = cfg.client_ip.get_or_insert_with(Default::default);
            cip.timeout_seconds
                .get_or_insert(i64::from(DEFAULT_AFFINITY_TIMEOUT_SECONDS));
        }
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        let headless = s.is_headless();

        // Ports.
        if s.ports.is_empty() && !headless {
            errs.add(
                "spec.ports",
                "at least one port is required (unless clusterIP is None)",
            );
        }
        let mut names = BTreeSet::new();
        let mut port_protos = BTreeSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            match &p.name {
                Some(n) => {
                    if let Err(why) = check_dns1123_label(n) {
                        errs.add(format!("{path}.name"), why);
                    } else if !names.insert(n.as_str()) {
                        errs.add(format!("{path}.name"), format!("duplicate port name {n:?}"));
                    }
                }
                None if s.ports.len() > 1 => errs.add(
                    format!("{path}.name"),
                    "is required when a service has more than one port",
                ),
                None => {}
            }
            if !port_protos.insert((p.port, p.protocol)) {
                errs.add(
                    format!("{path}.port"),
                    format!("duplicate port {}/{}", p.port, p.protocol),
                );
            }
            if let Some(tp) = &p.target_port {
                tp.validate_port(&format!("{path}.targetPort"), errs);
            }
            if let Some(np) = p.node_port {
                if !s.has_node_ports() {
                    errs.add(
                        format!("{path}.nodePort"),
                        format!(
                            "only NodePort and LoadBalancer services have node ports, not {:?}",
                            s.type_
                        ),
                    );
                } else if !NODE_PORT_RANGE.contains(&np.0) {
                    errs.add(
                        format!("{path}.nodePort"),
                        format!("{np} is outside the node port range 30000-32767"),
                    );
                }
            }
        }
        let mut node_ports = BTreeSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            if let Some(np) = p.node_port
                && !node_ports.insert((np, p.protocol))
            {
                errs.add(
                    format!("spec.ports[{i}].nodePort"),
                    format!("duplicate node port {np}/{}", p.protocol),
                );
            }
        }

        // Cluster IPs and families.
        if headless && s.has_node_ports() {
            errs.add(
                "spec.clusterIP",
                format!("a {:?} service cannot be headless (None)", s.type_),
            );
        }
        if let Some(ip) = &s.cluster_ip
            && ip != "None"
            && !ip.is_empty()
            && ip.parse::<IpAddr>().is_err()
        {
            errs.add(
                "spec.clusterIP",
                format!("{ip:?} must be \"None\" or an IP address"),
            );
        }
        if s.cluster_ips.len() > 2 {
            errs.add(
                "spec.clusterIPs",
                "at most two addresses (one per IP family)",
            );
        }
        let mut ip_fams = Vec::new();
        for (i, ip) in s.cluster_ips.iter().enumerate() {
            if ip == "None" {
                if i > 0 || s.cluster_ips.len() > 1 {
                    errs.add(
                        format!("spec.clusterIPs[{i}]"),
                        "\"None\" must be the only entry",
                    );
                }
                continue;
            }
            match ip.parse::<IpAddr>() {
                Ok(a) => ip_fams.push(ServiceIpFamily::of(&a)),
                Err(_) => errs.add(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ip:?} is not an IP address"),
                ),
            }
        }
        if ip_fams.len() == 2 && ip_fams[0] == ip_fams[1] {
            errs.add(
                "spec.clusterIPs[1]",
                "the two addresses must be of different IP families",
            );
        }
        if let (Some(ip), Some(first)) = (&s.cluster_ip, s.cluster_ips.first())
            && ip != first
        {
            errs.add(
                "spec.clusterIPs[0]",
                format!("{first:?} must equal spec.clusterIP ({ip:?})"),
            );
        }
        if s.ip_families.len() > 2 {
            errs.add("spec.ipFamilies", "at most two families");
        }
        if s.ip_families.len() == 2 && s.ip_families[0] == s.ip_families[1] {
            errs.add(
                "spec.ipFamilies[1]",
                format!("duplicate family {:?}", s.ip_families[1]),
            );
        }
        for (i, (fam, ipfam)) in s.ip_families.iter().zip(&ip_fams).enumerate() {
            if fam != ipfam {
                errs.add(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{fam:?} does not match spec.clusterIPs[{i}] ({ipfam:?})"),
                );
            }
        }
        if s.ip_family_policy == Some(IpFamilyPolicy::SingleStack)
            && (s.ip_families.len() > 1 || ip_fams.len() > 1)
        {
            errs.add(
                "spec.ipFamilyPolicy",
                "SingleStack allows one IP family; use PreferDualStack or RequireDualStack",
            );
        }

        // Selector.
        for (k, v) in &s.selector {
            if let Err(why) = validate_label_key(k).and_then(|_| validate_label_value(v)) {
                errs.add(format!("spec.selector[{k:?}]"), why);
            }
        }

        // Affinity and traffic policies.
        if let Some(cfg) = &s.session_affinity_config {
            if s.session_affinity != SessionAffinity::ClientIP {
                errs.add(
                    "spec.sessionAffinityConfig",
                    "only valid with sessionAffinity: ClientIP",
                );
            }
            if let Some(t) = cfg.client_ip.as_ref().and_then(|c| c.timeout_seconds)
                && !(1..=86400).contains(&t)
            {
                errs.add(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is out of range 1-86400"),
                );
            }
        }
        if s.external_traffic_policy.is_some() && !s.has_node_ports() && s.external_ips.is_empty() {
            errs.add(
                "spec.externalTrafficPolicy",
                "only valid for NodePort and LoadBalancer services or services with externalIPs",
            );
        }

        // Status.
        if let Some(lb) = self
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
        {
            for (i, ing) in lb.ingress.iter().enumerate() {
                if ing.ip.is_none() && ing.hostname.is_none() {
                    errs.add(
                        format!("status.loadBalancer.ingress[{i}]"),
                        "needs ip or hostname",
                    );
                }
            }
        }
    }
}
