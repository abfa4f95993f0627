//! Calico FelixConfiguration: per-cluster (`default`) and per-node (`node.<name>`) dataplane
//! settings.
//!
//! Every field is optional in the resource. The `default` configuration gets Calico's
//! defaults filled in at parse time (so `serval get -o yaml` shows them); `node.<name>`
//! configurations stay partial because they only override what they set. The agent resolves
//! a node's settings with [`FelixConfigurationSpec::overlay`] and
//! [`FelixConfigurationSpec::effective`].

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::net::{self, IpNet};
use crate::types::{CalicoPort, FieldErrors, Port};

/// Felix's default `bpfDataIfacePattern`.
pub const DEFAULT_BPF_DATA_IFACE_PATTERN: &str =
    "^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)";
/// Name of the cluster-wide configuration.
pub const DEFAULT_FELIX_CONFIG: &str = "default";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FelixConfiguration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: FelixConfigurationSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BpfExternalServiceMode {
    #[default]
    Tunnel,
    #[serde(rename = "DSR")]
    Dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BpfConnectTimeLoadBalancing {
    /// Connect-time load balancing for TCP services only.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BpfLogLevel {
    #[default]
    Off,
    Info,
    Debug,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EnabledDisabled {
    #[default]
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LogSeverity {
    Debug,
    #[default]
    Info,
    Warning,
    Error,
    Fatal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EndpointToHostAction {
    #[default]
    Drop,
    Accept,
    Return,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FelixConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_external_service_mode: Option<BpfExternalServiceMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_connect_time_load_balancing: Option<BpfConnectTimeLoadBalancing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_iptables_cleanup_enabled: Option<bool>,
    /// Regular expression for the host interfaces BPF programs attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_data_iface_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_log_level: Option<BpfLogLevel>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfMapSizeNATFrontend"
    )]
    pub bpf_map_size_nat_frontend: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfMapSizeNATBackend"
    )]
    pub bpf_map_size_nat_backend: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfMapSizeNATAffinity"
    )]
    pub bpf_map_size_nat_affinity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_route: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_conntrack: Option<i64>,
    /// Most backends a Maglev table is sized for (1-3000): its size M is the smallest prime
    /// ≥ 100 × this (services annotated `lb.projectcalico.org/external-traffic-strategy:
    /// maglev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_maglev_max_endpoints_per_service: Option<i64>,
    /// Most Maglev frontends with a table (1-3000); sizes the table map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_maglev_max_services: Option<i64>,
    /// Source ports for SNAT on collision, `min:max`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfPSNATPorts"
    )]
    pub bpf_psnat_ports: Option<CalicoPort>,
    /// Clients in these CIDRs reach node ports as in Tunnel mode even when DSR is on.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfDSROptoutCIDRs",
        with = "cidr_list_opt"
    )]
    pub bpf_dsr_optout_cidrs: Option<Vec<IpNet>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "bpfHostNetworkedNATWithoutCTLB"
    )]
    pub bpf_host_networked_nat_without_ctlb: Option<EnabledDisabled>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "xdpEnabled"
    )]
    pub xdp_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint_to_host_action: Option<EndpointToHostAction>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vxlanPort")]
    pub vxlan_port: Option<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vxlanVNI")]
    pub vxlan_vni: Option<u32>,
    /// 0 means auto-detect.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vxlanMTU")]
    pub vxlan_mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<Port>,
}

/// A failsafe port: `{protocol, port, net}`, or the string forms `tcp:22` / `22`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtoPort {
    /// `tcp`, `udp` or `sctp` (lower case, as Calico writes it).
    pub protocol: String,
    pub port: u16,
    /// Only traffic from/to this CIDR is failsafe; unset means any address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
}

impl ProtoPort {
    pub fn new(protocol: &str, port: u16) -> ProtoPort {
        ProtoPort {
            protocol: protocol.to_string(),
            port,
            net: None,
        }
    }

    /// Parses `tcp:22`, `udp:68` or `22` (TCP).
    pub fn parse(s: &str) -> Result<ProtoPort, String> {
        let (proto, port) = match s.split_once(':') {
            Some((p, port)) => (p.to_ascii_lowercase(), port),
            None => ("tcp".to_string(), s),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("failsafe port {s:?}: expected protocol:port such as tcp:22"))?;
        let pp = ProtoPort {
            protocol: proto,
            port,
            net: None,
        };
        pp.check().map(|()| pp)
    }

    fn check(&self) -> Result<(), String> {
        if !matches!(self.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!(
                "failsafe protocol {:?} must be tcp, udp or sctp",
                self.protocol
            ));
        }
        if self.port == 0 {
            return Err("failsafe port 0 is out of range 1-65535".into());
        }
        if let Some(n) = &self.net {
            net::parse_ip_or_cidr(n).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ProtoPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Obj {
            #[serde(default = "tcp")]
            protocol: String,
            port: u16,
            #[serde(default)]
            net: Option<String>,
        }
        fn tcp() -> String {
            "tcp".into()
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProtoPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a failsafe port: {protocol, port, net} or \"tcp:22\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProtoPort, E> {
                ProtoPort::parse(v).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ProtoPort, A::Error> {
                let o = Obj::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let pp = ProtoPort {
                    protocol: o.protocol.to_ascii_lowercase(),
                    port: o.port,
                    net: o.net,
                };
                pp.check().map_err(de::Error::custom)?;
                Ok(pp)
            }
        }
        d.deserialize_any(V)
    }
}

mod cidr_list_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::net::IpNet;

    pub fn serialize<S: Serializer>(v: &Option<Vec<IpNet>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(list) => crate::net::serde_network_list::serialize(list, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
        #[derive(Deserialize)]
        #[serde(transparent)]
        struct L(#[serde(with = "crate::net::serde_network_list")] Vec<IpNet>);
        Ok(Option::<L>::deserialize(d)?.map(|l| l.0))
    }
}

/// Felix settings with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct FelixSettings {
    pub bpf_enabled: bool,
    pub bpf_external_service_mode: BpfExternalServiceMode,
    pub bpf_connect_time_load_balancing: BpfConnectTimeLoadBalancing,
    pub bpf_kube_proxy_iptables_cleanup_enabled: bool,
    pub bpf_data_iface_pattern: String,
    pub bpf_log_level: BpfLogLevel,
    pub bpf_map_size_nat_frontend: u32,
    pub bpf_map_size_nat_backend: u32,
    pub bpf_map_size_nat_affinity: u32,
    pub bpf_map_size_route: u32,
    pub bpf_map_size_conntrack: u32,
    pub bpf_maglev_max_endpoints_per_service: u32,
    pub bpf_maglev_max_services: u32,
    /// Inclusive range.
    pub bpf_psnat_ports: (u16, u16),
    pub bpf_dsr_optout_cidrs: Vec<IpNet>,
    pub bpf_host_networked_nat_without_ctlb: EnabledDisabled,
    pub xdp_enabled: bool,
    pub log_severity_screen: LogSeverity,
    pub failsafe_inbound_host_ports: Vec<ProtoPort>,
    pub failsafe_outbound_host_ports: Vec<ProtoPort>,
    pub default_endpoint_to_host_action: EndpointToHostAction,
    pub vxlan_port: u16,
    pub vxlan_vni: u32,
    pub vxlan_mtu: u32,
    pub health_enabled: bool,
    pub health_port: u16,
    pub prometheus_metrics_enabled: bool,
    pub prometheus_metrics_port: u16,
}

fn proto_ports(list: &[&str]) -> Vec<ProtoPort> {
    list.iter()
        .map(|s| ProtoPort::parse(s).expect("built-in failsafe ports parse"))
        .collect()
}

/// Calico's default inbound failsafe ports.
pub fn default_failsafe_inbound() -> Vec<ProtoPort> {
    proto_ports(&[
        "tcp:22", "udp:68", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443", "tcp:6666",
        "tcp:6667",
    ])
}

/// Calico's default outbound failsafe ports.
pub fn default_failsafe_outbound() -> Vec<ProtoPort> {
    proto_ports(&[
        "tcp:53", "udp:53", "udp:67", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443",
        "tcp:6666", "tcp:6667",
    ])
}

impl Default for FelixSettings {
    /// Calico's documented defaults.
    fn default() -> FelixSettings {
        FelixSettings {
            bpf_enabled: false,
            bpf_external_service_mode: BpfExternalServiceMode::Tunnel,
            bpf_connect_time_load_balancing: BpfConnectTimeLoadBalancing::Tcp,
            bpf_kube_proxy_iptables_cleanup_enabled: true,
            bpf_data_iface_pattern: DEFAULT_BPF_DATA_IFACE_PATTERN.to_string(),
            bpf_log_level: BpfLogLevel::Off,
            bpf_map_size_nat_frontend: 65536,
            bpf_map_size_nat_backend: 262144,
            bpf_map_size_nat_affinity: 65536,
            bpf_map_size_route: 262144,
            bpf_map_size_conntrack: 512000,
            bpf_maglev_max_endpoints_per_service: 100,
            bpf_maglev_max_services: 100,
            bpf_psnat_ports: (20000, 29999),
            bpf_dsr_optout_cidrs: Vec::new(),
            bpf_host_networked_nat_without_ctlb: EnabledDisabled::Enabled,
            xdp_enabled: true,
            log_severity_screen: LogSeverity::Info,
            failsafe_inbound_host_ports: default_failsafe_inbound(),
            failsafe_outbound_host_ports: default_failsafe_outbound(),
            default_endpoint_to_host_action: EndpointToHostAction::Drop,
            vxlan_port: 4789,
            vxlan_vni: 4096,
            vxlan_mtu: 0,
            health_enabled: false,
            health_port: 9099,
            prometheus_metrics_enabled: false,
            prometheus_metrics_port: 9091,
        }
    }
}

macro_rules! overlay_fields {
    ($base:expr, $over:expr, $($f:ident),* $(,)?) => {{
        let mut out = $base.clone();
        $( if $over.$f.is_some() { out.$f = $over.$f.clone(); } )*
        out
    }};
}

impl FelixConfigurationSpec {
    /// `self` (e.g. `default`) with every field `over` (e.g. `node.<name>`) sets replaced.
    pub fn overlay(&self, over: &FelixConfigurationSpec) -> FelixConfigurationSpec {
        overlay_fields!(
            self,
            over,
            bpf_enabled,
            bpf_external_service_mode,
            bpf_connect_time_load_balancing,
            bpf_kube_proxy_iptables_cleanup_enabled,
            bpf_data_iface_pattern,
            bpf_log_level,
            bpf_map_size_nat_frontend,
            bpf_map_size_nat_backend,
            bpf_map_size_nat_affinity,
            bpf_map_size_route,
            bpf_map_size_conntrack,
            bpf_maglev_max_endpoints_per_service,
            bpf_maglev_max_services,
            bpf_psnat_ports,
            bpf_dsr_optout_cidrs,
            bpf_host_networked_nat_without_ctlb,
            xdp_enabled,
            log_severity_screen,
            failsafe_inbound_host_ports,
            failsafe_outbound_host_ports,
            default_endpoint_to_host_action,
            vxlan_port,
            vxlan_vni,
            vxlan_mtu,
            health_enabled,
            health_port,
            prometheus_metrics_enabled,
            prometheus_metrics_port,
        )
    }

    /// Every setting, with Calico's default where this spec leaves it unset. Call on a
    /// validated spec (map sizes positive, PSNAT ports a range).
    pub fn effective(&self) -> FelixSettings {
        let d = FelixSettings::default();
        let size = |v: Option<i64>, def: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(def);
        FelixSettings {
            bpf_enabled: self.bpf_enabled.unwrap_or(d.bpf_enabled),
            bpf_external_service_mode: self
                .bpf_external_service_mode
                .unwrap_or(d.bpf_external_service_mode),
            bpf_connect_time_load_balancing: self
                .bpf_connect_time_load_balancing
                .unwrap_or(d.bpf_connect_time_load_balancing),
            bpf_kube_proxy_iptables_cleanup_enabled: self
                .bpf_kube_proxy_iptables_cleanup_enabled
                .unwrap_or(d.bpf_kube_proxy_iptables_cleanup_enabled),
            bpf_data_iface_pattern: self
                .bpf_data_iface_pattern
                .clone()
                .unwrap_or(d.bpf_data_iface_pattern),
            bpf_log_level: self.bpf_log_level.unwrap_or(d.bpf_log_level),
            bpf_map_size_nat_frontend: size(
                self.bpf_map_size_nat_frontend,
                d.bpf_map_size_nat_frontend,
            ),
            bpf_map_size_nat_backend: size(
                self.bpf_map_size_nat_backend,
                d.bpf_map_size_nat_backend,
            ),
            bpf_map_size_nat_affinity: size(
                self.bpf_map_size_nat_affinity,
                d.bpf_map_size_nat_affinity,
            ),
            bpf_map_size_route: size(self.bpf_map_size_route, d.bpf_map_size_route),
            bpf_map_size_conntrack: size(self.bpf_map_size_conntrack, d.bpf_map_size_conntrack),
            bpf_maglev_max_endpoints_per_service: size(
                self.bpf_maglev_max_endpoints_per_service,
                d.bpf_maglev_max_endpoints_per_service,
            ),
            bpf_maglev_max_services: size(self.bpf_maglev_max_services, d.bpf_maglev_max_services),
            bpf_psnat_ports: self
                .bpf_psnat_ports
                .as_ref()
                .and_then(CalicoPort::range)
                .unwrap_or(d.bpf_psnat_ports),
            bpf_dsr_optout_cidrs: self
                .bpf_dsr_optout_cidrs
                .clone()
                .unwrap_or(d.bpf_dsr_optout_cidrs),
            bpf_host_networked_nat_without_ctlb: self
                .bpf_host_networked_nat_without_ctlb
                .unwrap_or(d.bpf_host_networked_nat_without_ctlb),
            xdp_enabled: self.xdp_enabled.unwrap_or(d.xdp_enabled),
            log_severity_screen: self.log_severity_screen.unwrap_or(d.log_severity_screen),
            failsafe_inbound_host_ports: self
                .failsafe_inbound_host_ports
                .clone()
                .unwrap_or(d.failsafe_inbound_host_ports),
            failsafe_outbound_host_ports: self
                .failsafe_outbound_host_ports
                .clone()
                .unwrap_or(d.failsafe_outbound_host_ports),
            default_endpoint_to_host_action: self
                .default_endpoint_to_host_action
                .unwrap_or(d.default_endpoint_to_host_action),
            vxlan_port: self.vxlan_port.map_or(d.vxlan_port, Port::get),
            vxlan_vni: self.vxlan_vni.unwrap_or(d.vxlan_vni),
            vxlan_mtu: self.vxlan_mtu.unwrap_or(d.vxlan_mtu),
            health_enabled: self.health_enabled.unwrap_or(d.health_enabled),
            health_port: self.health_port.map_or(d.health_port, Port::get),
            prometheus_metrics_enabled: self
                .prometheus_metrics_enabled
                .unwrap_or(d.prometheus_metrics_enabled),
            prometheus_metrics_port: self
                .prometheus_metrics_port
                .map_or(d.prometheus_metrics_port, Port::get),
        }
    }

    /// Calico's defaults for every field, as a spec.
    pub fn calico_defaults() -> FelixConfigurationSpec {
        let e = FelixSettings::default();
        FelixConfigurationSpec {
            bpf_enabled: Some(e.bpf_enabled),
            bpf_external_service_mode: Some(e.bpf_external_service_mode),
            bpf_connect_time_load_balancing: Some(e.bpf_connect_time_load_balancing),
            bpf_kube_proxy_iptables_cleanup_enabled: Some(
                e.bpf_kube_proxy_iptables_cleanup_enabled,
            ),
            bpf_data_iface_pattern: Some(e.bpf_data_iface_pattern),
            bpf_log_level: Some(e.bpf_log_level),
            bpf_map_size_nat_frontend: Some(i64::from(e.bpf_map_size_nat_frontend)),
            bpf_map_size_nat_backend: Some(i64::from(e.bpf_map_size_nat_backend)),
            bpf_map_size_nat_affinity: Some(i64::from(e.bpf_map_size_nat_affinity)),
            bpf_map_size_route: Some(i64::from(e.bpf_map_size_route)),
            bpf_map_size_conntrack: Some(i64::from(e.bpf_map_size_conntrack)),
            bpf_maglev_max_endpoints_per_service: Some(i64::from(
                e.bpf_maglev_max_endpoints_per_service,
            )),
            bpf_maglev_max_services: Some(i64::from(e.bpf_maglev_max_services)),
            bpf_psnat_ports: Some(CalicoPort::Range(e.bpf_psnat_ports.0, e.bpf_psnat_ports.1)),
            bpf_dsr_optout_cidrs: Some(e.bpf_dsr_optout_cidrs),
            bpf_host_networked_nat_without_ctlb: Some(e.bpf_host_networked_nat_without_ctlb),
            xdp_enabled: Some(e.xdp_enabled),
            log_severity_screen: Some(e.log_severity_screen),
            failsafe_inbound_host_ports: Some(e.failsafe_inbound_host_ports),
            failsafe_outbound_host_ports: Some(e.failsafe_outbound_host_ports),
            default_endpoint_to_host_action: Some(e.default_endpoint_to_host_action),
            vxlan_port: Some(Port(e.vxlan_port)),
            vxlan_vni: Some(e.vxlan_vni),
            vxlan_mtu: Some(e.vxlan_mtu),
            health_enabled: Some(e.health_enabled),
            health_port: Some(Port(e.health_port)),
            prometheus_metrics_enabled: Some(e.prometheus_metrics_enabled),
            prometheus_metrics_port: Some(Port(e.prometheus_metrics_port)),
        }
    }

    /// Every field set: what this spec sets, Calico's default for the rest (what the
    /// `default` configuration shows). Values are kept as written, valid or not.
    pub fn with_defaults(&self) -> FelixConfigurationSpec {
        FelixConfigurationSpec::calico_defaults().overlay(self)
    }
}

impl FelixConfiguration {
    /// The node a `node.<name>` configuration applies to.
    pub fn node_name(&self) -> Option<&str> {
        self.metadata.name.strip_prefix("node.")
    }

    pub(crate) fn apply_defaults(&mut self) {
        if self.metadata.name == DEFAULT_FELIX_CONFIG {
            self.spec = self.spec.with_defaults();
        }
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        let name = &self.metadata.name;
        if name != DEFAULT_FELIX_CONFIG && !name.starts_with("node.") {
            errs.add(
                "metadata.name",
                format!(
                    "{name:?}: a FelixConfiguration is named \"default\" or \"node.<nodename>\""
                ),
            );
        }
        if let Some(p) = &s.bpf_data_iface_pattern
            && let Err(e) = regex::Regex::new(p)
        {
            errs.add(
                "spec.bpfDataIfacePattern",
                format!(
                    "{p:?} is not a valid regular expression: {}",
                    e.to_string().lines().last().unwrap_or("")
                ),
            );
        }
        for (v, field) in [
            (s.bpf_map_size_nat_frontend, "bpfMapSizeNATFrontend"),
            (s.bpf_map_size_nat_backend, "bpfMapSizeNATBackend"),
            (s.bpf_map_size_nat_affinity, "bpfMapSizeNATAffinity"),
            (s.bpf_map_size_route, "bpfMapSizeRoute"),
            (s.bpf_map_size_conntrack, "bpfMapSizeConntrack"),
        ] {
            if let Some(v) = v
                && !(1..=i64::from(u32::MAX)).contains(&v)
            {
                errs.add(
                    format!("spec.{field}"),
                    format!("{v} must be a positive map size (1-{})", u32::MAX),
                );
            }
        }
        for (v, field) in [
            (
                s.bpf_maglev_max_endpoints_per_service,
                "bpfMaglevMaxEndpointsPerService",
            ),
            (s.bpf_maglev_max_services, "bpfMaglevMaxServices"),
        ] {
            if let Some(v) = v
                && !(1..=3000).contains(&v)
            {
                errs.add(
                    format!("spec.{field}"),
                    format!("{v} is out of range 1-3000 (Calico's bounds)"),
                );
            }
        }
        if let Some(p) = &s.bpf_psnat_ports {
            match p {
                CalicoPort::Range(a, _) | CalicoPort::Number(a) if *a == 0 => errs.add(
                    "spec.bpfPSNATPorts",
                    format!("{p}: port 0 is out of range 1-65535"),
                ),
                CalicoPort::Named(_) => errs.add(
                    "spec.bpfPSNATPorts",
                    format!("{p:?} must be a port range such as 20000:29999"),
                ),
                _ => {}
            }
        }
        if let Some(v) = s.vxlan_vni
            && !(1..=0xFF_FFFF).contains(&v)
        {
            errs.add("spec.vxlanVNI", format!("{v} is out of range 1-16777215"));
        }
    }
}
