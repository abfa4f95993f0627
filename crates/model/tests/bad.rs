//! Invalid input, table-driven: for every kind, each row is a document, the field path the
//! error must name, and a substring of the reason.

use serval_model::parse_documents;

struct Case {
    doc: &'static str,
    path: &'static str,
    reason: &'static str,
}

const fn case(doc: &'static str, path: &'static str, reason: &'static str) -> Case {
    Case { doc, path, reason }
}

fn run(table: &[Case]) {
    let mut failures = Vec::new();
    for (i, c) in table.iter().enumerate() {
        match parse_documents("t.yaml", c.doc) {
            Ok(rs) => failures.push(format!(
                "row {i}: accepted, expected {}: {}\n{}\n{rs:?}",
                c.path, c.reason, c.doc
            )),
            Err(errs) => {
                let hit = errs
                    .iter()
                    .any(|e| e.path == c.path && e.reason.contains(c.reason));
                if !hit {
                    failures.push(format!(
                        "row {i}: expected `{}: …{}…`, got:\n{errs}\n--- doc:\n{}",
                        c.path, c.reason, c.doc
                    ));
                }
                for e in errs.iter() {
                    assert_eq!(e.document, 1);
                    assert_eq!(e.file, "t.yaml");
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

#[test]
fn documents_and_types() {
    run(&[
        case("- a\n- b\n", "", "must be a mapping"),
        case(
            "kind: Pod\nmetadata: {name: a}\n",
            "apiVersion",
            "apiVersion is missing",
        ),
        case(
            "apiVersion: v1\nmetadata: {name: a}\n",
            "kind",
            "kind is missing",
        ),
        case(
            "apiVersion: v1\nkind: Gadget\nmetadata: {name: a}\n",
            "kind",
            "unknown kind \"Gadget\" in apiVersion \"v1\"",
        ),
        case(
            "apiVersion: v1\nkind: Gadget\nmetadata: {name: a}\n",
            "kind",
            "known kinds: v1 Namespace, v1 Pod",
        ),
        case(
            "apiVersion: v1\nkind: IPPool\nmetadata: {name: a}\n",
            "kind",
            "IPPool is in apiVersion projectcalico.org/v3",
        ),
        case(
            "apiVersion: serval.dev/v1\nkind: WorkloadEndpoint\nmetadata: {name: a}\nspec: {pod: a, node: n, interfaceName: x}\n",
            "kind",
            "internal record",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nextra: 1\n",
            "extra",
            "unknown field `extra`",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, generation: 3}\n",
            "metadata.generation",
            "unknown field `generation`",
        ),
    ]);
}

#[test]
fn namespace() {
    run(&[
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {}\n",
            "metadata.name",
            "is required",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: My_NS}\n",
            "metadata.name",
            "lower-case letters",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
            "metadata.name",
            "lower-case letters, digits and '-'",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: b}\n",
            "metadata.namespace",
            "cluster-scoped",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {'bad key!': x}}\n",
            "metadata.labels[\"bad key!\"]",
            "label key",
        ),
        case(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nstatus: {phase: Gone}\n",
            "status.phase",
            "Active or Terminating",
        ),
    ]);
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";

#[test]
fn pod() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!(
                "{POD}spec: {{containers: [{{name: c, ports: [{{containerPort: 70000}}]}}]}}\n"
            ),
            "spec.containers[0].ports[0].containerPort",
            "70000 is out of range 1-65535",
        ),
        (
            format!("{POD}spec: {{containers: [{{name: c, ports: [{{containerPort: 0}}]}}]}}\n"),
            "spec.containers[0].ports[0].containerPort",
            "0 is out of range",
        ),
        (
            format!(
                "{POD}spec: {{containers: [{{name: c, ports: [{{containerPort: 80, protocol: tcp}}]}}]}}\n"
            ),
            "spec.containers[0].ports[0].protocol",
            "unknown variant `tcp`",
        ),
        (
            format!(
                "{POD}spec: {{containers: [{{name: c, ports: [{{name: HTTP, containerPort: 80}}]}}]}}\n"
            ),
            "spec.containers[0].ports[0].name",
            "IANA",
        ),
        (
            format!(
                "{POD}spec: {{containers: [{{name: c, ports: [{{name: web, containerPort: 80}}, {{name: web, containerPort: 81}}]}}]}}\n"
            ),
            "spec.containers[0].ports[1].name",
            "duplicate port name",
        ),
        (
            format!("{POD}spec: {{containers: [{{name: c}}, {{name: c}}]}}\n"),
            "spec.containers[1].name",
            "duplicate container name",
        ),
        (
            format!("{POD}spec: {{containers: [{{name: c, resources: {{}}}}]}}\n"),
            "spec.containers[0].resources",
            "unknown field `resources`",
        ),
        (
            format!("{POD}spec: {{nodeName: Node_1, containers: []}}\n"),
            "spec.nodeName",
            "lower-case",
        ),
        (
            format!(
                "{POD}spec: {{containers: [{{name: c, ports: [{{containerPort: eighty}}]}}]}}\n"
            ),
            "spec.containers[0].ports[0].containerPort",
            "invalid type",
        ),
        (
            format!("{POD}status: {{podIP: 10.0.0.300}}\n"),
            "status.podIP",
            "invalid IP address",
        ),
        (
            format!("{POD}status: {{podIPs: [{{ip: 10.0.0.1}}, {{ip: 10.0.0.2}}]}}\n"),
            "status.podIPs[1]",
            "one address per IP family",
        ),
        (
            format!("{POD}status: {{phase: Sleeping}}\n"),
            "status.phase",
            "unknown variant `Sleeping`",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: -p}\n".to_string(),
            "metadata.name",
            "lower-case letters",
        ),
    ];
    run_owned(rows);
}

fn run_owned(rows: Vec<(String, &'static str, &'static str)>) {
    let leaked: Vec<Case> = rows
        .into_iter()
        .map(|(d, p, r)| case(Box::leak(d.into_boxed_str()), p, r))
        .collect();
    run(&leaked);
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n";

#[test]
fn service() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{SVC}spec: {{ports: [{{name: a, port: 80}}, {{name: b, port: 70000}}]}}\n"),
            "spec.ports[1].port",
            "70000 is out of range 1-65535",
        ),
        (
            format!("{SVC}spec: {{ports: [{{port: 80, targetPort: 0}}]}}\n"),
            "spec.ports[0].targetPort",
            "0 is out of range 1-65535",
        ),
        (
            format!("{SVC}spec: {{ports: [{{port: 80, targetPort: Http_1}}]}}\n"),
            "spec.ports[0].targetPort",
            "IANA",
        ),
        (
            format!("{SVC}spec: {{ports: [{{port: 80, targetPort: \"8080\"}}]}}\n"),
            "spec.ports[0].targetPort",
            "has no letter",
        ),
        (
            format!("{SVC}spec: {{ports: [{{port: 80}}, {{port: 81}}]}}\n"),
            "spec.ports[0].name",
            "more than one port",
        ),
        (
            format!("{SVC}spec: {{ports: [{{name: a, port: 80}}, {{name: a, port: 81}}]}}\n"),
            "spec.ports[1].name",
            "duplicate port name",
        ),
        (
            format!("{SVC}spec: {{ports: [{{name: a, port: 80}}, {{name: b, port: 80}}]}}\n"),
            "spec.ports[1].port",
            "duplicate port 80/TCP",
        ),
        (
            format!("{SVC}spec: {{ports: [{{port: 80, nodePort: 30080}}]}}\n"),
            "spec.ports[0].nodePort",
            "only NodePort and LoadBalancer",
        ),
        (
            format!("{SVC}spec: {{type: NodePort, ports: [{{port: 80, nodePort: 8080}}]}}\n"),
            "spec.ports[0].nodePort",
            "outside the node port range 30000-32767",
        ),
        (
            format!("{SVC}spec: {{type: ExternalName, ports: [{{port: 80}}]}}\n"),
            "spec.type",
            "unknown variant `ExternalName`",
        ),
        (
            format!("{SVC}spec: {{ports: []}}\n"),
            "spec.ports",
            "at least one port",
        ),
        (
            format!("{SVC}spec: {{clusterIP: 10.96.0.300, ports: [{{port: 80}}]}}\n"),
            "spec.clusterIP",
            "must be \"None\" or an IP address",
        ),
        (
            format!("{SVC}spec: {{type: NodePort, clusterIP: None, ports: [{{port: 80}}]}}\n"),
            "spec.clusterIP",
            "cannot be headless",
        ),
        (
            format!("{SVC}spec: {{clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{{port: 80}}]}}\n"),
            "spec.clusterIPs[1]",
            "different IP families",
        ),
        (
            format!(
                "{SVC}spec: {{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{{port: 80}}]}}\n"
            ),
            "spec.clusterIPs[0]",
            "must equal spec.clusterIP",
        ),
        (
            format!(
                "{SVC}spec: {{clusterIPs: [10.96.0.1], ipFamilies: [IPv6], ports: [{{port: 80}}]}}\n"
            ),
            "spec.ipFamilies[0]",
            "does not match spec.clusterIPs[0]",
        ),
        (
            format!("{SVC}spec: {{ipFamilies: [IPv4, IPv4], ports: [{{port: 80}}]}}\n"),
            "spec.ipFamilies[1]",
            "duplicate family",
        ),
        (
            format!(
                "{SVC}spec: {{ipFamilies: [IPv4, IPv6], ipFamilyPolicy: SingleStack, ports: [{{port: 80}}]}}\n"
            ),
            "spec.ipFamilyPolicy",
            "SingleStack allows one IP family",
        ),
        (
            format!("{SVC}spec: {{ipFamilies: [IPv5], ports: [{{port: 80}}]}}\n"),
            "spec.ipFamilies[0]",
            "unknown variant `IPv5`",
        ),
        (
            format!(
                "{SVC}spec: {{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 86401}}}}, ports: [{{port: 80}}]}}\n"
            ),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "86401 is out of range 1-86400",
        ),
        (
            format!(
                "{SVC}spec: {{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 0}}}}, ports: [{{port: 80}}]}}\n"
            ),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "0 is out of range",
        ),
        (
            format!(
                "{SVC}spec: {{sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 10}}}}, ports: [{{port: 80}}]}}\n"
            ),
            "spec.sessionAffinityConfig",
            "only valid with sessionAffinity: ClientIP",
        ),
        (
            format!("{SVC}spec: {{sessionAffinity: Sticky, ports: [{{port: 80}}]}}\n"),
            "spec.sessionAffinity",
            "unknown variant `Sticky`",
        ),
        (
            format!("{SVC}spec: {{externalTrafficPolicy: Local, ports: [{{port: 80}}]}}\n"),
            "spec.externalTrafficPolicy",
            "only valid for NodePort",
        ),
        (
            format!("{SVC}spec: {{internalTrafficPolicy: Nearby, ports: [{{port: 80}}]}}\n"),
            "spec.internalTrafficPolicy",
            "unknown variant `Nearby`",
        ),
        (
            format!("{SVC}spec: {{externalIPs: [not-an-ip], ports: [{{port: 80}}]}}\n"),
            "spec.externalIPs[0]",
            "invalid IP address",
        ),
        (
            format!("{SVC}spec: {{selector: {{app: 'a b'}}, ports: [{{port: 80}}]}}\n"),
            "spec.selector[\"app\"]",
            "label value",
        ),
        (
            format!(
                "{SVC}spec: {{ports: [{{port: 80}}]}}\nstatus: {{loadBalancer: {{ingress: [{{}}]}}}}\n"
            ),
            "status.loadBalancer.ingress[0]",
            "needs ip or hostname",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n"
                .to_string(),
            "metadata.name",
            "must start with a lower-case letter",
        ),
    ];
    run_owned(rows);
}

const EPS: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n";

#[test]
fn endpointslice() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{EPS}endpoints: []\n"),
            "",
            "missing field `addressType`",
        ),
        (
            format!("{EPS}addressType: IPv5\nendpoints: []\n"),
            "addressType",
            "unknown variant `IPv5`",
        ),
        (
            format!("{EPS}addressType: FQDN\nendpoints: []\n"),
            "addressType",
            "not supported",
        ),
        (
            format!("{EPS}addressType: IPv4\nendpoints: [{{addresses: [fd00::1]}}]\n"),
            "endpoints[0].addresses[0]",
            "does not match addressType IPv4",
        ),
        (
            format!("{EPS}addressType: IPv4\nendpoints: [{{addresses: [x.y]}}]\n"),
            "endpoints[0].addresses[0]",
            "is not an IP address",
        ),
        (
            format!("{EPS}addressType: IPv4\nendpoints: [{{addresses: []}}]\n"),
            "endpoints[0].addresses",
            "1 to 100 addresses",
        ),
        (
            format!("{EPS}addressType: IPv4\nendpoints: []\nports: [{{port: 0}}]\n"),
            "ports[0].port",
            "0 is out of range 1-65535",
        ),
        (
            format!(
                "{EPS}addressType: IPv4\nendpoints: []\nports: [{{name: Bad_Name, port: 80}}]\n"
            ),
            "ports[0].name",
            "lower-case",
        ),
        (
            format!(
                "{EPS}addressType: IPv4\nendpoints: [{{addresses: [10.0.0.1], conditions: {{ready: maybe}}}}]\n"
            ),
            "endpoints[0].conditions.ready",
            "invalid type",
        ),
    ];
    run_owned(rows);
}

const KNP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n";

#[test]
fn kubernetes_networkpolicy() {
    let rows: Vec<(String, &str, &str)> = vec![
        (
            format!("{KNP}spec: {{podSelector: {{matchLabels: {{'a b': x}}}}}}\n"),
            "spec.podSelector.matchLabels[\"a b\"]",
            "label key",
        ),
        (
            format!(
                "{KNP}spec: {{podSelector: {{matchExpressions: [{{key: a, operator: In}}]}}}}\n"
            ),
            "spec.podSelector.matchExpressions[0].values",
            "",
        ),
        (
            format!(
                "{KNP}spec: {{podSelector: {{matchExpressions: [{{key: a, operator: Near}}]}}}}\n"
            ),
            "spec.podSelector.matchExpressions[0].operator",
            "unknown variant `Near`",
        ),
        (
            format!("{KNP}spec: {{policyTypes: [Sideways]}}\n"),
            "spec.policyTypes[0]",
            "unknown variant `Sideways`",
        ),
        (
            format!("{KNP}spec: {{policyTypes: [Ingress, Ingress]}}\n"),
            "spec.policyTypes[1]",
            "duplicate",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{from: [{{}}]}}]}}\n"),
            "spec.ingress[0].from[0]",
            "needs podSelector, namespaceSelector or ipBlock",
        ),
        (
            format!(
                "{KNP}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8}}, podSelector: {{}}}}]}}]}}\n"
            ),
            "spec.ingress[0].from[0]",
            "cannot be combined",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/33}}}}]}}]}}\n"),
            "spec.ingress[0].from[0].ipBlock.cidr",
            "not an IP address or CIDR",
        ),
        (
            format!(
                "{KNP}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}}}]}}]}}\n"
            ),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            format!(
                "{KNP}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}}}]}}]}}\n"
            ),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            format!(
                "{KNP}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16, bogus]}}}}]}}]}}\n"
            ),
            "spec.ingress[0].from[0].ipBlock.except[1]",
            "not an IP address or CIDR",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{ports: [{{port: 70000}}]}}]}}\n"),
            "spec.ingress[0].ports[0].port",
            "70000 is out of range 1-65535",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{ports: [{{port: 9000, endPort: 8000}}]}}]}}\n"),
            "spec.ingress[0].ports[0].endPort",
            "8000 is below port 9000",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{ports: [{{port: http, endPort: 8000}}]}}]}}\n"),
            "spec.ingress[0].ports[0].endPort",
            "named port",
        ),
        (
            format!("{KNP}spec: {{ingress: [{{ports: [{{endPort: 8000}}]}}]}}\n"),
            "spec.ingress[0].ports[0].endPort",
            "requires port",
        ),
        (
            format!("{KNP}spec: {{egress: [{{ports: [{{protocol: ICMP}}]}}]}}\n"),
            "spec.egress[0].ports[0].protocol",
            "unknown variant `ICMP`",
        ),
        (
            format!(
                "{KNP}spec: {{egress: [{{to: [{{namespaceSelector: {{matchLabels: {{team: 'x y'}}}}}}]}}]}}\n"
            ),
            "spec.egress[0].to[0].namespaceSelector.matchLabels[\"team\"]",
            "label value",
        ),
        (
            format!(
                "{KNP}spec: {{egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}], from: []}}]}}\n"
            ),
            "spec.egress[0].from",
            "unknown field `from`",
        ),
    ];
    run_owned(rows);
}

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
            "unknown field `vxlanMode`",
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

#[test]
fn all_errors_of_all_documents_are_reported_with_their_index() {
    let text = include_str!("fixtures/bad-multi.yaml");
    let errs = parse_documents("bad-multi.yaml", text).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "bad-multi.yaml: document 3 (Service default/web): spec.ports[1].port: 70000 is out of range 1-65535",
            "bad-multi.yaml: document 5 (IPPool pool-a): spec.blockSize: 19 is out of range 20-32 for an IPv4 pool",
            "bad-multi.yaml: document 5 (IPPool pool-a): spec.nodeSelector: selector \"zone ==\" does not parse: at column 8: expected a quoted string but found end of input",
        ],
        "{errs}"
    );
    assert_eq!(errs.to_string(), lines.join("\n"));
}

#[test]
fn yaml_syntax_errors_name_the_document() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [unclosed\n";
    let errs = parse_documents("syntax.yaml", text).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.0[0].document, 2);
    assert!(errs.0[0].reason.starts_with("not valid YAML"), "{errs}");
}
