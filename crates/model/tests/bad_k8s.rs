//! Invalid Kubernetes-kind input, table-driven: each row is a document, the field path the
//! error must name, and a substring of the reason. Also document-level errors.

mod common;

use common::{case, run, run_owned};
use serval_model::parse_documents;

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
