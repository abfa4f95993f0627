//! Valid input: fixtures parse, defaults are applied, and every resource round-trips through
//! JSON (the datastore form) and YAML (`serval get -o yaml`).

use std::net::IpAddr;

use serval_model::calico::{
    BpfExternalServiceMode, BpfLogLevel, Encapsulation, FelixSettings, ProtoPort, TierDefaultAction,
};
use serval_model::k8s::{ServiceType, TrafficPolicy};
use serval_model::types::{IntOrString, PolicyType, Protocol};
use serval_model::{Kind, Resource, ResourceKey, parse_documents};

const CLUSTER: &str = include_str!("fixtures/cluster.yaml");

fn cluster() -> Vec<Resource> {
    match parse_documents("cluster.yaml", CLUSTER) {
        Ok(r) => r,
        Err(e) => panic!("fixture does not parse:\n{e}"),
    }
}

fn find(rs: &[Resource], kind: Kind, name: &str) -> Resource {
    rs.iter()
        .find(|r| r.kind() == kind && r.meta().name == name)
        .unwrap_or_else(|| panic!("{kind} {name} not in fixture"))
        .clone()
}

#[test]
fn fixture_covers_every_user_kind() {
    let rs = cluster();
    for info in serval_model::kind::KINDS.iter().filter(|i| i.user) {
        assert!(
            rs.iter().any(|r| r.kind() == info.kind),
            "fixture lacks {}",
            info.name
        );
    }
}

#[test]
fn every_resource_round_trips_through_json_and_yaml() {
    for r in cluster() {
        let json = r.to_json();
        let back = Resource::from_json(&json).unwrap_or_else(|e| panic!("{}: {e}", r.key()));
        assert_eq!(back, r, "JSON round trip of {}", r.key());

        let yaml = r.to_yaml();
        let again = parse_documents("again.yaml", &yaml)
            .unwrap_or_else(|e| panic!("{}:\n{yaml}\n{e}", r.key()));
        assert_eq!(again, vec![r.clone()], "YAML round trip of {}", r.key());

        // Deserialize impl (for embedding in other structs) agrees with from_json.
        let via_serde: Resource = serde_json::from_slice(&json).unwrap();
        assert_eq!(via_serde, r);
    }
}

#[test]
fn api_version_and_kind_come_first() {
    for r in cluster() {
        let json = String::from_utf8(r.to_json()).unwrap();
        let expected = format!(
            r#"{{"apiVersion":"{}","kind":"{}","metadata":"#,
            r.kind().api_version(),
            r.kind().name()
        );
        assert!(json.starts_with(&expected), "{json}");
    }
}

#[test]
fn namespaced_kinds_default_to_the_default_namespace() {
    let rs = parse_documents(
        "x.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
    )
    .unwrap();
    assert_eq!(rs[0].meta().namespace.as_deref(), Some("default"));
    assert_eq!(rs[0].key().store_key(), "/serval/resources/pods/default/p");
}

#[test]
fn service_defaults_follow_kubernetes() {
    let rs = cluster();
    let Resource::Service(svc) = find(&rs, Kind::Service, "frontend") else {
        unreachable!()
    };
    let s = &svc.spec;
    assert_eq!(s.type_, ServiceType::NodePort);
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        s.ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(
        s.ports[1].target_port,
        Some(IntOrString::Int(9100)),
        "targetPort defaults to port"
    );
    assert_eq!(s.affinity_timeout_seconds(), Some(10800));
    assert_eq!(s.external_traffic_policy, Some(TrafficPolicy::Local));
    assert_eq!(s.internal_traffic_policy, Some(TrafficPolicy::Cluster));

    let Resource::Service(b) = find(&rs, Kind::Service, "backend") else {
        unreachable!()
    };
    assert_eq!(
        b.spec.cluster_ip.as_deref(),
        Some("10.96.0.20"),
        "clusterIP defaults to clusterIPs[0]"
    );
    assert_eq!(b.spec.cluster_addrs().len(), 2);
    assert_eq!(
        b.spec.external_traffic_policy, None,
        "ClusterIP services get no externalTrafficPolicy"
    );

    let Resource::Service(h) = find(&rs, Kind::Service, "frontend-headless") else {
        unreachable!()
    };
    assert!(h.spec.is_headless());
    assert!(h.spec.cluster_addrs().is_empty());
}

#[test]
fn pod_helpers() {
    let rs = cluster();
    let Resource::Pod(p) = find(&rs, Kind::Pod, "backend-1") else {
        unreachable!()
    };
    assert!(p.is_ready());
    assert_eq!(p.ips(), vec!["10.244.1.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(p.named_port("grpc").unwrap().container_port.get(), 9000);
    let Resource::Pod(f) = find(&rs, Kind::Pod, "frontend-1") else {
        unreachable!()
    };
    assert!(!f.is_ready(), "no status: not ready");
    assert_eq!(f.named_port("dns").unwrap().protocol, Protocol::Udp);
}

#[test]
fn policy_defaults() {
    let rs = cluster();
    let Resource::K8sNetworkPolicy(k) = find(&rs, Kind::K8sNetworkPolicy, "backend-from-frontend")
    else {
        unreachable!()
    };
    assert_eq!(
        k.spec.policy_types,
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
    assert_eq!(k.spec.ingress[0].ports[0].protocol, Protocol::Tcp);

    let Resource::GlobalNetworkPolicy(g) = find(&rs, Kind::GlobalNetworkPolicy, "allow-icmpv6")
    else {
        unreachable!()
    };
    assert_eq!(g.spec.tier, "default");
    assert_eq!(g.spec.types, vec![PolicyType::Ingress]);
    assert_eq!(g.spec.order, None, "unset order stays unset (sorts last)");

    let egress_only = parse_documents(
        "x.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: e}\nspec:\n  egress: [{action: Allow}]\n",
    )
    .unwrap();
    let Resource::GlobalNetworkPolicy(e) = &egress_only[0] else {
        unreachable!()
    };
    assert_eq!(e.spec.types, vec![PolicyType::Egress]);

    let Resource::Tier(t) = find(&rs, Kind::Tier, "security") else {
        unreachable!()
    };
    assert_eq!(t.spec.default_action, Some(TierDefaultAction::Deny));
}

#[test]
fn ippool_defaults_and_normalisation() {
    let rs = cluster();
    let Resource::IPPool(v4) = find(&rs, Kind::IPPool, "default-ipv4") else {
        unreachable!()
    };
    assert_eq!(v4.spec.block_size, Some(26));
    assert_eq!(v4.spec.encapsulation, Encapsulation::VxlanCrossSubnet);
    assert!(v4.spec.nat_outgoing);
    assert_eq!(v4.spec.node_selector, "all()");
    assert!(!v4.spec.disabled);
    let Resource::IPPool(v6) = find(&rs, Kind::IPPool, "default-ipv6") else {
        unreachable!()
    };
    assert_eq!(v6.spec.block_size, Some(120));
    assert_eq!(v6.spec.encapsulation, Encapsulation::None);

    let minimal = parse_documents(
        "p.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p6}\nspec: {cidr: 'fd00:1::5/64'}\n",
    )
    .unwrap();
    let Resource::IPPool(p) = &minimal[0] else {
        unreachable!()
    };
    assert_eq!(p.spec.block_size, Some(122));
    assert_eq!(
        p.spec.cidr.to_string(),
        "fd00:1::/64",
        "host bits are cleared, as calicoctl does"
    );
    let yaml = minimal[0].to_yaml();
    for line in [
        "blockSize: 122",
        "encapsulation: None",
        "natOutgoing: false",
        "nodeSelector: all()",
        "disabled: false",
    ] {
        assert!(yaml.contains(line), "{line} missing from\n{yaml}");
    }
}

#[test]
fn felix_default_gets_calico_defaults_and_node_overrides_merge() {
    let rs = cluster();
    let Resource::FelixConfiguration(d) = find(&rs, Kind::FelixConfiguration, "default") else {
        unreachable!()
    };
    let s = &d.spec;
    assert_eq!(s.bpf_enabled, Some(true));
    assert_eq!(
        s.bpf_external_service_mode,
        Some(BpfExternalServiceMode::Dsr)
    );
    assert_eq!(
        s.bpf_map_size_nat_frontend,
        Some(65536),
        "default filled in"
    );
    assert_eq!(s.xdp_enabled, Some(true));
    assert_eq!(
        s.failsafe_inbound_host_ports.as_deref(),
        Some(&[ProtoPort::new("tcp", 22), ProtoPort::new("udp", 68)][..])
    );
    assert_eq!(s.failsafe_outbound_host_ports.as_ref().unwrap().len(), 10);

    let Resource::FelixConfiguration(n) = find(&rs, Kind::FelixConfiguration, "node.node-1") else {
        unreachable!()
    };
    assert_eq!(n.node_name(), Some("node-1"));
    assert_eq!(n.spec.bpf_enabled, None, "node overrides stay partial");
    let eff = d.spec.overlay(&n.spec).effective();
    assert!(eff.bpf_enabled);
    assert_eq!(eff.bpf_log_level, BpfLogLevel::Info);
    assert_eq!(eff.bpf_map_size_conntrack, 1_024_000);
    assert_eq!(eff.bpf_external_service_mode, BpfExternalServiceMode::Dsr);

    let defaults = FelixSettings::default();
    assert_eq!(defaults.bpf_psnat_ports, (20000, 29999));
    assert_eq!(defaults.bpf_map_size_nat_backend, 262144);
    assert_eq!(defaults.bpf_map_size_route, 262144);
    assert_eq!(defaults.bpf_map_size_conntrack, 512000);
    assert_eq!(defaults.failsafe_inbound_host_ports.len(), 9);
    assert!(
        regex::Regex::new(&defaults.bpf_data_iface_pattern)
            .unwrap()
            .is_match("eth0")
    );
    assert!(
        !regex::Regex::new(&defaults.bpf_data_iface_pattern)
            .unwrap()
            .is_match("cali1234")
    );
}

#[test]
fn bgp_helpers() {
    let rs = cluster();
    let Resource::BGPPeer(p) = find(&rs, Kind::BGPPeer, "v6-router") else {
        unreachable!()
    };
    assert_eq!(
        p.spec.peer_addr(),
        Some(("fd00:31::1".parse().unwrap(), Some(1179)))
    );
    assert_eq!(p.spec.as_number.unwrap().0, 65546, "asdot 1.10");
    let Resource::Node(n) = find(&rs, Kind::Node, "node-1") else {
        unreachable!()
    };
    let bgp = n.spec.bgp.as_ref().unwrap();
    assert_eq!(
        bgp.ipv4_address.unwrap().to_string(),
        "172.31.0.11/24",
        "host bits kept on a node address"
    );
    let Resource::BGPConfiguration(c) = find(&rs, Kind::BGPConfiguration, "default") else {
        unreachable!()
    };
    assert_eq!(c.spec.effective_listen_port(), 179);
}

#[test]
fn json_input_and_empty_documents() {
    let text = r#"
---
---
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
---
# only a comment
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
"#;
    let rs = parse_documents("mixed.yaml", text).unwrap();
    let names: Vec<_> = rs.iter().map(|r| r.meta().name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn keys() {
    let k = ResourceKey::new(Kind::Pod, Some("shop"), "web");
    assert_eq!(k.store_key(), "/serval/resources/pods/shop/web");
    assert_eq!(k.to_string(), "Pod/shop/web");
    assert_eq!(
        ResourceKey::prefix(Kind::Pod, Some("shop")),
        "/serval/resources/pods/shop/"
    );
    assert_eq!(
        ResourceKey::prefix(Kind::Pod, None),
        "/serval/resources/pods/"
    );
    let c = ResourceKey::new(Kind::IPPool, None, "p");
    assert_eq!(c.store_key(), "/serval/resources/ippools/p");
    assert_eq!(c.to_string(), "IPPool/p");
    assert_eq!(
        ResourceKey::prefix(Kind::IPPool, Some("ignored")),
        "/serval/resources/ippools/"
    );
    for key in [
        k,
        c,
        ResourceKey::new(Kind::K8sNetworkPolicy, Some("a"), "b"),
    ] {
        assert_eq!(ResourceKey::from_store_key(&key.store_key()), Some(key));
    }
    assert_eq!(
        ResourceKey::from_store_key("/serval/resources/pods/onlyname"),
        None
    );
    assert_eq!(ResourceKey::from_store_key("/other/pods/a/b"), None);
}

#[test]
fn workload_endpoint_from_pod_round_trips_but_is_not_appliable() {
    let rs = cluster();
    let Resource::Pod(p) = find(&rs, Kind::Pod, "frontend-1") else {
        unreachable!()
    };
    let wep = serval_model::workloadendpoint::WorkloadEndpoint::for_pod(
        &p,
        "node-1",
        "abc123",
        "svl1234abcd",
        vec!["10.244.1.9/32".parse().unwrap()],
    );
    assert_eq!(wep.spec.ports.len(), 3);
    assert_eq!(
        wep.metadata.labels.get("app").map(String::as_str),
        Some("frontend")
    );
    assert_eq!(wep.spec.profiles, vec!["kns.shop".to_string()]);
    let r = Resource::WorkloadEndpoint(wep);
    assert!(r.validate().is_empty(), "{:?}", r.validate());
    assert_eq!(
        r.key().store_key(),
        "/serval/resources/workloadendpoints/shop/frontend-1"
    );
    assert_eq!(Resource::from_json(&r.to_json()).unwrap(), r);
    let err = parse_documents("w.yaml", &r.to_yaml()).unwrap_err();
    assert!(err.to_string().contains("internal record"), "{err}");
}

#[test]
fn v1_list_documents_are_flattened() {
    let text = "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n  - {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
    let rs = parse_documents("list.yaml", text).unwrap();
    assert_eq!(rs.len(), 2);
    let bad = "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n  - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: [{port: 0}]}}\n";
    let errs = parse_documents("list.yaml", bad).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "list.yaml: document 1 (Service default/s): items[1].spec.ports[0].port: 0 is out of range 1-65535"
    );
}

#[test]
fn empty_cluster_ip_means_allocate() {
    let rs = parse_documents(
        "s.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: '', ports: [{port: 80}]}\n",
    )
    .unwrap();
    let Resource::Service(s) = &rs[0] else {
        unreachable!()
    };
    assert_eq!(s.spec.cluster_ip, None);
    assert!(s.spec.cluster_ips.is_empty());
}

#[test]
fn felix_default_yaml_shows_calico_defaults() {
    let rs = parse_documents(
        "f.yaml",
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n",
    )
    .unwrap();
    let yaml = rs[0].to_yaml();
    for line in [
        "bpfEnabled: false",
        "bpfExternalServiceMode: Tunnel",
        "bpfConnectTimeLoadBalancing: TCP",
        "bpfKubeProxyIptablesCleanupEnabled: true",
        "bpfLogLevel: Off",
        "bpfMapSizeNATFrontend: 65536",
        "bpfMapSizeNATBackend: 262144",
        "bpfMapSizeNATAffinity: 65536",
        "bpfMapSizeRoute: 262144",
        "bpfMapSizeConntrack: 512000",
        "bpfMaglevMaxEndpointsPerService: 100",
        "bpfMaglevMaxServices: 100",
        "bpfPSNATPorts: 20000:29999",
        "bpfDSROptoutCIDRs: []",
        "bpfHostNetworkedNATWithoutCTLB: Enabled",
        "xdpEnabled: true",
        "logSeverityScreen: Info",
        "- protocol: tcp\n    port: 22\n",
    ] {
        assert!(yaml.contains(line), "{line:?} missing from\n{yaml}");
    }
    assert_eq!(
        parse_documents("again.yaml", &yaml).unwrap(),
        rs,
        "`Off` reads back as the enum, not a boolean"
    );
}
