//! The model rejects invalid BGP fields at apply (serval_model::parse_documents), with the
//! field named in the error.

fn rejects(yaml: &str, field: &str) {
    let e = serval_model::parse_documents("t.yaml", yaml).expect_err(yaml);
    let text = e.to_string();
    assert!(text.contains(field), "error should name {field}: {text}");
}

fn accepts(yaml: &str) {
    serval_model::parse_documents("t.yaml", yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
}

const PEER: &str = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n";
const CONF: &str =
    "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n";
const NODE: &str = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n";

#[test]
fn as_number_range() {
    for bad in ["0", "4294967296", "-1", "\"70000.1\"", "\"x\""] {
        rejects(
            &format!("{PEER}spec: {{peerIP: 10.0.0.1, asNumber: {bad}}}"),
            "asNumber",
        );
        rejects(&format!("{CONF}spec: {{asNumber: {bad}}}"), "asNumber");
        rejects(
            &format!("{NODE}spec: {{bgp: {{ipv4Address: 10.0.0.1/24, asNumber: {bad}}}}}"),
            "asNumber",
        );
    }
    accepts(&format!(
        "{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 4294967295}}"
    ));
    accepts(&format!(
        "{PEER}spec: {{peerIP: 10.0.0.1, asNumber: \"1.10\"}}"
    ));
}

#[test]
fn peer_address() {
    for bad in [
        "10.0.0.256",
        "fd00::1::2",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        "router",
    ] {
        rejects(
            &format!("{PEER}spec: {{peerIP: \"{bad}\", asNumber: 64512}}"),
            "peerIP",
        );
    }
    rejects(&format!("{PEER}spec: {{peerIP: 10.0.0.1}}"), "asNumber");
    accepts(&format!(
        "{PEER}spec: {{peerIP: \"[fd00::1]:1179\", asNumber: 64512}}"
    ));
}

#[test]
fn selectors() {
    rejects(
        &format!("{PEER}spec: {{peerSelector: \"a == \"}}"),
        "peerSelector",
    );
    rejects(
        &format!("{PEER}spec: {{nodeSelector: \"has(\", peerIP: 10.0.0.1, asNumber: 1}}"),
        "nodeSelector",
    );
    rejects(
        &format!("{PEER}spec: {{peerSelector: all(), peerIP: 10.0.0.1, asNumber: 1}}"),
        "peerSelector",
    );
    rejects(
        &format!("{PEER}spec: {{node: n1, nodeSelector: all(), peerIP: 10.0.0.1, asNumber: 1}}"),
        "nodeSelector",
    );
    accepts(&format!(
        "{PEER}spec: {{nodeSelector: all(), peerSelector: \"route-reflector == 'true'\"}}"
    ));
}

#[test]
fn node_and_configuration_fields() {
    rejects(
        &format!("{NODE}spec: {{bgp: {{ipv4Address: \"fd00::1/64\"}}}}"),
        "ipv4Address",
    );
    rejects(
        &format!("{NODE}spec: {{bgp: {{ipv6Address: 10.0.0.1/24}}}}"),
        "ipv6Address",
    );
    rejects(
        &format!(
            "{NODE}spec: {{bgp: {{ipv4Address: 10.0.0.1/24, routeReflectorClusterID: 300.0.0.1}}}}"
        ),
        "routeReflectorClusterID",
    );
    rejects(&format!("{CONF}spec: {{listenPort: 0}}"), "listenPort");
    rejects(
        &format!("{CONF}spec: {{logSeverityScreen: Loud}}"),
        "logSeverityScreen",
    );
    rejects(
        &format!("{CONF}spec: {{serviceClusterIPs: [{{cidr: 10.96.0.0/33}}]}}"),
        "serviceClusterIPs",
    );
    rejects(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: other}\nspec: {}\n",
        "metadata.name",
    );
}
