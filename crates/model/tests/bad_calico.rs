//! Invalid Calico-kind input, table-driven: each row is a document, the field path the
//! error must name, and a substring of the reason.

mod common;

use common::{case, run, run_owned};

#[test]
fn tier() {
    run(&[
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: a.b}\n",
            "metadata.name",
            "lower-case letters, digits and '-'",
        ),
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: {order: .nan}\n",
            "spec.order",
            "not a finite number",
        ),
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: {order: high}\n",
            "spec.order",
            "invalid type",
        ),
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: {defaultAction: Allow}\n",
            "spec.defaultAction",
            "unknown variant `Allow`",
        ),
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: default}\nspec: {order: 5}\n",
            "spec.order",
            "fixed at 1000000",
        ),
        case(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t, namespace: x}\n",
            "metadata.namespace",
            "cluster-scoped",
        ),
    ]);
}

const CNP: &str =
    "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n";
const GNP: &str =
    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n";

#[test]
fn calico_policies() {
    let rows: Vec<(String, &str, &str)> = vec![
        (format!("{CNP}spec: {{selector: \"app == \"}}\n"), "spec.selector", "does not parse: at column"),
        (format!("{CNP}spec: {{selector: \"app == 'a' &&& b\"}}\n"), "spec.selector", "at column"),
        (format!("{CNP}spec: {{tier: Bad_Tier}}\n"), "spec.tier", "lower-case"),
        (format!("{CNP}spec: {{order: .inf}}\n"), "spec.order", "not a finite number"),
        (format!("{CNP}spec: {{namespaceSelector: all()}}\n"), "spec.namespaceSelector", "only GlobalNetworkPolicy"),
        (format!("{CNP}spec: {{doNotTrack: true, applyOnForward: true}}\n"), "spec.doNotTrack", "only valid on GlobalNetworkPolicy"),
        (format!("{CNP}spec: {{types: [Ingress, Ingress]}}\n"), "spec.types[1]", "duplicate"),
        (format!("{CNP}spec: {{types: [Egress], ingress: [{{action: Allow}}]}}\n"), "spec.ingress", "does not include Ingress"),
        (format!("{CNP}spec: {{ingress: [{{action: Accept}}]}}\n"), "spec.ingress[0].action", "unknown variant `Accept`"),
        (format!("{CNP}spec: {{ingress: [{{}}]}}\n"), "spec.ingress[0]", "missing field `action`"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: GRE}}]}}\n"), "spec.ingress[0].protocol", "unknown protocol \"GRE\""),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: 300}}]}}\n"), "spec.ingress[0].protocol", "300 is out of range 0-255"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, destination: {{ports: [80]}}}}]}}\n"), "spec.ingress[0].destination.ports", "need protocol TCP, UDP"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, destination: {{ports: [80]}}}}]}}\n"), "spec.ingress[0].destination.ports", "need protocol TCP, UDP"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [70000]}}}}]}}\n"), "spec.ingress[0].destination.ports[0]", "70000 is out of range 0-65535"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [\"90:80\"]}}}}]}}\n"), "spec.ingress[0].destination.ports[0]", "start is above the end"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: TCP, source: {{notPorts: [Bad_Name]}}}}]}}\n"), "spec.ingress[0].source.notPorts[0]", "IANA"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, icmp: {{type: 8}}}}]}}\n"), "spec.ingress[0].icmp", "need protocol ICMP or ICMPv6"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: TCP, icmp: {{type: 8}}}}]}}\n"), "spec.ingress[0].icmp", "need protocol ICMP or ICMPv6"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, icmp: {{type: 255}}}}]}}\n"), "spec.ingress[0].icmp.type", "255 is out of range 0-254"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, icmp: {{type: 3, code: 256}}}}]}}\n"), "spec.ingress[0].icmp.code", "256 is out of range 0-255"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, icmp: {{code: 1}}}}]}}\n"), "spec.ingress[0].icmp.code", "requires type"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, notICMP: {{type: -1}}}}]}}\n"), "spec.ingress[0].notICMP.type", "out of range 0-254"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, protocol: ICMP, icmp: {{type: 8, kind: 1}}}}]}}\n"), "spec.ingress[0].icmp.kind", "unknown field `kind`"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, ipVersion: 5}}]}}\n"), "spec.ingress[0].ipVersion", "must be 4 or 6"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, ipVersion: 6, protocol: ICMP}}]}}\n"), "spec.ingress[0].protocol", "does not match ipVersion 6"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, ipVersion: 4, source: {{nets: ['fd00::/8']}}}}]}}\n"), "spec.ingress[0].source.nets[0]", "is IPv6 but the rule is IPv4"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, source: {{nets: [10.0.0.0/8, 'fd00::/8']}}}}]}}\n"), "spec.ingress[0].source.nets[1]", "is IPv6 but the rule is IPv4"),
        (format!("{CNP}spec: {{ingress: [{{action: Allow, source: {{nets: [10.0.0.0/40]}}}}]}}\n"), "spec.ingress[0].source.nets[0]", "not an IP address or CIDR"),
        (format!("{CNP}spec: {{egress: [{{action: Deny, destination: {{notNets: [bogus]}}}}]}}\n"), "spec.egress[0].destination.notNets[0]", "not an IP address or CIDR"),
        (format!("{CNP}spec: {{egress: [{{action: Deny, destination: {{selector: \"has(\"}}}}]}}\n"), "spec.egress[0].destination.selector", "does not parse"),
        (format!("{CNP}spec: {{egress: [{{action: Deny, destination: {{notSelector: \"a in {{\"}}}}]}}\n"), "spec.egress[0].destination.notSelector", "does not parse"),
        (format!("{CNP}spec: {{egress: [{{action: Deny, source: {{namespaceSelector: \"==\"}}}}]}}\n"), "spec.egress[0].source.namespaceSelector", "does not parse"),
        (format!("{CNP}spec: {{egress: [{{action: Deny, source: {{serviceAccounts: {{}}}}}}]}}\n"), "spec.egress[0].source.serviceAccounts", "unknown field `serviceAccounts`"),
        (format!("{GNP}spec: {{namespaceSelector: \"x ==\"}}\n"), "spec.namespaceSelector", "does not parse"),
        (format!("{GNP}spec: {{preDNAT: true, doNotTrack: true, applyOnForward: true}}\n"), "spec.preDNAT", "cannot both be true"),
        (format!("{GNP}spec: {{preDNAT: true}}\n"), "spec.applyOnForward", "must be true"),
        (format!("{GNP}spec: {{preDNAT: true, applyOnForward: true, egress: [{{action: Allow}}]}}\n"), "spec.egress", "preDNAT policies cannot have egress"),
        (format!("{GNP}spec: {{selector: \"a == 'b' ||\"}}\n"), "spec.selector", "at column"),
        ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g, namespace: x}\n".to_string(), "metadata.namespace", "cluster-scoped"),
    ];
    run_owned(rows);
}

const HEP: &str = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: h}\n";

#[test]
fn hostendpoint() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{HEP}spec: {{interfaceName: eth0}}\n"),
            "spec.node",
            "is required",
        ),
        (
            format!("{HEP}spec: {{node: n1}}\n"),
            "spec.interfaceName",
            "set interfaceName or expectedIPs",
        ),
        (
            format!("{HEP}spec: {{node: n1, interfaceName: averyveryverylongname0}}\n"),
            "spec.interfaceName",
            "1 to 15 characters",
        ),
        (
            format!("{HEP}spec: {{node: n1, expectedIPs: [10.0.0.256]}}\n"),
            "spec.expectedIPs[0]",
            "invalid IP address",
        ),
        (
            format!(
                "{HEP}spec: {{node: n1, interfaceName: eth0, ports: [{{name: ssh, protocol: ICMP, port: 22}}]}}\n"
            ),
            "spec.ports[0].protocol",
            "has no ports",
        ),
        (
            format!(
                "{HEP}spec: {{node: n1, interfaceName: eth0, ports: [{{name: ssh, protocol: TCP, port: 0}}]}}\n"
            ),
            "spec.ports[0].port",
            "0 is out of range",
        ),
        (
            format!(
                "{HEP}spec: {{node: n1, interfaceName: eth0, ports: [{{name: SSH, protocol: TCP, port: 22}}]}}\n"
            ),
            "spec.ports[0].name",
            "IANA",
        ),
        (
            format!("{HEP}spec: {{node: n1, interfaceName: eth0, profiles: [Bad]}}\n"),
            "spec.profiles[0]",
            "lower-case",
        ),
        (
            format!("{HEP}spec: {{node: n1, interfaceName: eth0, mtu: 1500}}\n"),
            "spec.mtu",
            "unknown field `mtu`",
        ),
    ];
    run_owned(rows);
}

const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool}\n";

#[test]
fn ippool() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{POOL}spec: {{}}\n"),
            "spec",
            "missing field `cidr`",
        ),
        (POOL.to_string(), "", "missing field `spec`"),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/33}}\n"),
            "spec.cidr",
            "not an IP address or CIDR",
        ),
        (
            format!("{POOL}spec: {{cidr: banana}}\n"),
            "spec.cidr",
            "\"banana\" is not an IP address or CIDR",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, blockSize: 19}}\n"),
            "spec.blockSize",
            "19 is out of range 20-32 for an IPv4 pool",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, blockSize: 33}}\n"),
            "spec.blockSize",
            "out of range 20-32",
        ),
        (
            format!("{POOL}spec: {{cidr: 'fd00::/64', blockSize: 112}}\n"),
            "spec.blockSize",
            "112 is out of range 116-128 for an IPv6 pool",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/28}}\n"),
            "spec.blockSize",
            "/26 blocks do not fit in pool 10.0.0.0/28",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/24, blockSize: 22}}\n"),
            "spec.blockSize",
            "do not fit",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, blockSize: 300}}\n"),
            "spec.blockSize",
            "invalid value",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, encapsulation: IPIP}}\n"),
            "spec.encapsulation",
            "unknown variant `IPIP`, expected one of `None`, `VXLAN`, `VXLANCrossSubnet`",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, vxlanMode: Always}}\n"),
            "spec.vxlanMode",
            "unknown field `vxlanMode`, expected one of `cidr`, `blockSize`, `encapsulation`, `natOutgoing`, `nodeSelector`, `disabled`, `disableBGPExport`; Serval sets the mode with spec.encapsulation",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, natOutgoing: yes}}\n"),
            "spec.natOutgoing",
            "invalid type",
        ),
        (
            format!("{POOL}spec: {{cidr: 10.0.0.0/16, nodeSelector: \"zone = 'a'\"}}\n"),
            "spec.nodeSelector",
            "does not parse",
        ),
        (
            format!("{POOL}spec: {{cidr: 127.0.0.0/16}}\n"),
            "spec.cidr",
            "loopback",
        ),
        (
            format!("{POOL}spec: {{cidr: 'fe80::/64'}}\n"),
            "spec.cidr",
            "link-local",
        ),
        (
            format!("{POOL}spec: {{cidr: 224.0.0.0/16}}\n"),
            "spec.cidr",
            "multicast",
        ),
    ];
    run_owned(rows);
}

const NODE: &str = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n";

#[test]
fn node() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{NODE}spec: {{bgp: {{ipv4Address: 10.0.0.1/40}}}}\n"),
            "spec.bgp.ipv4Address",
            "not an IP address or CIDR",
        ),
        (
            format!("{NODE}spec: {{bgp: {{ipv4Address: 'fd00::1/64'}}}}\n"),
            "spec.bgp.ipv4Address",
            "is not an IPv4 address",
        ),
        (
            format!("{NODE}spec: {{bgp: {{ipv6Address: 10.0.0.1/24}}}}\n"),
            "spec.bgp.ipv6Address",
            "is not an IPv6 address",
        ),
        (
            format!("{NODE}spec: {{bgp: {{asNumber: 0}}}}\n"),
            "spec.bgp.asNumber",
            "out of range 1-4294967295",
        ),
        (
            format!("{NODE}spec: {{bgp: {{asNumber: 4294967296}}}}\n"),
            "spec.bgp.asNumber",
            "out of range 1-4294967295",
        ),
        (
            format!("{NODE}spec: {{bgp: {{routeReflectorClusterID: 'fd00::1'}}}}\n"),
            "spec.bgp.routeReflectorClusterID",
            "invalid IPv4 address",
        ),
        (
            format!("{NODE}spec: {{ipv4VXLANTunnelAddr: 'fd00::1'}}\n"),
            "spec.ipv4VXLANTunnelAddr",
            "invalid IPv4 address",
        ),
        (
            format!("{NODE}spec: {{vxlanTunnelMACAddr: '66:cf:4a:12:34'}}\n"),
            "spec.vxlanTunnelMACAddr",
            "not a MAC address",
        ),
        (
            format!("{NODE}spec: {{addresses: [{{address: nope}}]}}\n"),
            "spec.addresses[0].address",
            "not an IP address or CIDR",
        ),
        (
            format!("{NODE}spec: {{addresses: [{{address: 10.0.0.1, type: Public}}]}}\n"),
            "spec.addresses[0].type",
            "not InternalIP",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: N1}\n".to_string(),
            "metadata.name",
            "lower-case",
        ),
    ];
    run_owned(rows);
}

const BGPC: &str =
    "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n";
const PEER: &str = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: peer}\n";

#[test]
fn bgp() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{BGPC}spec: {{asNumber: 0}}\n"),
            "spec.asNumber",
            "out of range 1-4294967295",
        ),
        (
            format!("{BGPC}spec: {{asNumber: '70000.1'}}\n"),
            "spec.asNumber",
            "asdot parts must be 0-65535",
        ),
        (
            format!("{BGPC}spec: {{asNumber: -5}}\n"),
            "spec.asNumber",
            "out of range 1-4294967295",
        ),
        (
            format!("{BGPC}spec: {{listenPort: 0}}\n"),
            "spec.listenPort",
            "0 is out of range 1-65535",
        ),
        (
            format!("{BGPC}spec: {{logSeverityScreen: Chatty}}\n"),
            "spec.logSeverityScreen",
            "is not one of Debug",
        ),
        (
            format!("{BGPC}spec: {{serviceClusterIPs: [{{cidr: 10.96.0.0/99}}]}}\n"),
            "spec.serviceClusterIPs[0].cidr",
            "not an IP address or CIDR",
        ),
        (
            format!("{BGPC}spec: {{nodeToNodeMeshEnabled: sometimes}}\n"),
            "spec.nodeToNodeMeshEnabled",
            "invalid type",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: cluster}\n"
                .to_string(),
            "metadata.name",
            "named \"default\" or \"node.<nodename>\"",
        ),
        (
            format!("{PEER}spec: {{peerIP: 10.0.0.1}}\n"),
            "spec.asNumber",
            "is required with peerIP",
        ),
        (
            format!("{PEER}spec: {{peerIP: 10.0.0.300, asNumber: 65000}}\n"),
            "spec.peerIP",
            "not an IP address or address:port",
        ),
        (
            format!("{PEER}spec: {{peerIP: 'fd00::1:179:x', asNumber: 65000}}\n"),
            "spec.peerIP",
            "not an IP address or address:port",
        ),
        (
            format!("{PEER}spec: {{peerIP: '10.0.0.1:0', asNumber: 65000}}\n"),
            "spec.peerIP",
            "port 0 is out of range",
        ),
        (
            format!("{PEER}spec: {{peerIP: '10.0.0.1:70000', asNumber: 65000}}\n"),
            "spec.peerIP",
            "not an IP address or address:port",
        ),
        (
            format!("{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 4294967296}}\n"),
            "spec.asNumber",
            "out of range 1-4294967295",
        ),
        (
            format!("{PEER}spec: {{}}\n"),
            "spec.peerIP",
            "set peerIP (with asNumber) or peerSelector",
        ),
        (
            format!("{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 1, peerSelector: all()}}\n"),
            "spec.peerSelector",
            "not both",
        ),
        (
            format!("{PEER}spec: {{peerSelector: \"rr ==\"}}\n"),
            "spec.peerSelector",
            "does not parse",
        ),
        (
            format!("{PEER}spec: {{peerSelector: all(), node: n1, nodeSelector: all()}}\n"),
            "spec.nodeSelector",
            "set node or nodeSelector, not both",
        ),
        (
            format!("{PEER}spec: {{peerSelector: all(), nodeSelector: \"rack in {{\"}}\n"),
            "spec.nodeSelector",
            "does not parse",
        ),
        (
            format!(
                "{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 65000, password: {{secretKeyRef: {{name: s, key: k}}}}}}\n"
            ),
            "spec.password.secretKeyRef",
            "give the password inline",
        ),
        (
            format!(
                "{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 65000, password: {{value: 'a\"b'}}}}\n"
            ),
            "spec.password.value",
            "must not contain quotes",
        ),
        (
            format!("{PEER}spec: {{peerIP: 10.0.0.1, asNumber: 65000, sourceAddress: Nope}}\n"),
            "spec.sourceAddress",
            "unknown variant",
        ),
    ];
    run_owned(rows);
}

const FELIX: &str =
    "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n";

#[test]
fn felix() {
    let rows: Vec<(String, &str, &str)> = vec![
        (format!("{FELIX}spec: {{bpfExternalServiceMode: Direct}}\n"), "spec.bpfExternalServiceMode", "unknown variant `Direct`, expected `Tunnel` or `DSR`"),
        (format!("{FELIX}spec: {{bpfConnectTimeLoadBalancing: UDP}}\n"), "spec.bpfConnectTimeLoadBalancing", "expected one of `TCP`, `Enabled`, `Disabled`"),
        (format!("{FELIX}spec: {{bpfLogLevel: Trace}}\n"), "spec.bpfLogLevel", "expected one of `Off`, `Info`, `Debug`"),
        (format!("{FELIX}spec: {{bpfDataIfacePattern: '^(eth.*'}}\n"), "spec.bpfDataIfacePattern", "not a valid regular expression"),
        (format!("{FELIX}spec: {{bpfPSNATPorts: '30000:20000'}}\n"), "spec.bpfPSNATPorts", "start is above the end"),
        (format!("{FELIX}spec: {{bpfPSNATPorts: psnat}}\n"), "spec.bpfPSNATPorts", "must be a port range"),
        (format!("{FELIX}spec: {{bpfPSNATPorts: '0:100'}}\n"), "spec.bpfPSNATPorts", "port 0 is out of range"),
        (format!("{FELIX}spec: {{bpfMapSizeNATFrontend: 0}}\n"), "spec.bpfMapSizeNATFrontend", "must be a positive map size"),
        (format!("{FELIX}spec: {{bpfMapSizeConntrack: -1}}\n"), "spec.bpfMapSizeConntrack", "must be a positive map size"),
        (format!("{FELIX}spec: {{bpfMaglevMaxEndpointsPerService: 3001}}\n"), "spec.bpfMaglevMaxEndpointsPerService", "out of range 1-3000"),
        (format!("{FELIX}spec: {{bpfMaglevMaxServices: 0}}\n"), "spec.bpfMaglevMaxServices", "out of range 1-3000"),
        (format!("{FELIX}spec: {{bpfMapSizeRoute: 99999999999}}\n"), "spec.bpfMapSizeRoute", "must be a positive map size"),
        (format!("{FELIX}spec: {{bpfDSROptoutCIDRs: [10.0.0.0/8, nope]}}\n"), "spec.bpfDSROptoutCIDRs[1]", "not an IP address or CIDR"),
        (format!("{FELIX}spec: {{bpfHostNetworkedNATWithoutCTLB: Maybe}}\n"), "spec.bpfHostNetworkedNATWithoutCTLB", "unknown variant `Maybe`"),
        (format!("{FELIX}spec: {{xdpEnabled: 1}}\n"), "spec.xdpEnabled", "invalid type"),
        (format!("{FELIX}spec: {{logSeverityScreen: Verbose}}\n"), "spec.logSeverityScreen", "unknown variant `Verbose`"),
        (format!("{FELIX}spec: {{failsafeInboundHostPorts: ['icmp:22']}}\n"), "spec.failsafeInboundHostPorts[0]", "must be tcp, udp or sctp"),
        (format!("{FELIX}spec: {{failsafeInboundHostPorts: ['tcp:ssh']}}\n"), "spec.failsafeInboundHostPorts[0]", "expected protocol:port"),
        (format!("{FELIX}spec: {{failsafeOutboundHostPorts: [{{protocol: udp, port: 70000}}]}}\n"), "spec.failsafeOutboundHostPorts[0].port", "invalid value"),
        (format!("{FELIX}spec: {{failsafeOutboundHostPorts: [{{protocol: udp, port: 53, net: 10.0.0.0/99}}]}}\n"), "spec.failsafeOutboundHostPorts[0]", "not an IP address or CIDR"),
        (format!("{FELIX}spec: {{failsafeOutboundHostPorts: [{{protocol: udp, port: 53, cidr: x}}]}}\n"), "spec.failsafeOutboundHostPorts[0].cidr", "unknown field `cidr`"),
        (format!("{FELIX}spec: {{vxlanVNI: 16777216}}\n"), "spec.vxlanVNI", "out of range 1-16777215"),
        (format!("{FELIX}spec: {{bpfEnabled: true, ipipEnabled: true}}\n"), "spec.ipipEnabled", "unknown field `ipipEnabled`"),
        ("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: global}\n".to_string(), "metadata.name", "named \"default\" or \"node.<nodename>\""),
    ];
    run_owned(rows);
}
