//! The fast path against the `Value` path: whenever it gives resources, the `Value` path gives
//! the same ones, and `parse_documents` (fast path, then fallback) always gives exactly what
//! the `Value` path gives, resources or errors.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::parse_documents_fast;
use crate::parse::{parse_documents, parse_documents_value};

/// Asserts the contract on one text; whether the fast path took it.
fn check(name: &str, text: &str) -> bool {
    let value = parse_documents_value(name, text);
    let fast = parse_documents_fast(text);
    if let Some(rs) = &fast {
        match &value {
            Ok(v) => assert_eq!(v, rs, "{name}: the fast path gave other resources"),
            Err(e) => panic!(
                "{name}: the fast path accepted a text the Value path rejects:\n{e}\n--- text:\n{text}"
            ),
        }
    }
    assert_eq!(parse_documents(name, text), value, "{name}");
    fast.is_some()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            // `work`: the bench's scratch directories (git-ignored, absent from a clean clone).
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules" | "work") {
                yaml_files(&p, out);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
}

/// Every string inside a YAML file that looks like resources (scenario `apply: |` blocks).
fn embedded_documents(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml_ng::Value::String(s) if s.contains("apiVersion:") => out.push(s.clone()),
        serde_yaml_ng::Value::Sequence(items) => {
            items.iter().for_each(|i| embedded_documents(i, out));
        }
        serde_yaml_ng::Value::Mapping(m) => m.values().for_each(|i| embedded_documents(i, out)),
        serde_yaml_ng::Value::Tagged(t) => embedded_documents(&t.value, out),
        _ => {}
    }
}

#[test]
fn every_yaml_file_of_the_repository() {
    let mut files = Vec::new();
    yaml_files(&repo_root(), &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    let mut taken = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read fixture");
        let name = f.display().to_string();
        if check(&name, &text) {
            taken.push(name.clone());
        }
        let mut embedded = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            if let Ok(v) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) {
                embedded_documents(&v, &mut embedded);
            }
        }
        for (i, e) in embedded.iter().enumerate() {
            let name = format!("{name} #{i}");
            if check(&name, e) {
                taken.push(name);
            }
        }
    }
    // Plain block YAML takes the fast path (flow collections such as `{app: web}` do not).
    assert!(
        taken
            .iter()
            .any(|n| n.ends_with("examples/30-services.yaml"))
            && taken.len() >= 5,
        "fast path took only {taken:?}"
    );
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: bench-svc-0
  namespace: default
  labels:
    app: web
spec:
  clusterIP: 10.96.16.0
  selector:
    bench-role: backend
  ports:
    - name: p80
      protocol: TCP
      port: 80
      targetPort: 8080
";

#[test]
fn the_bench_services_take_the_fast_path() {
    let text: String = (0..200)
        .map(|i| {
            format!(
                "---\n{}",
                SERVICE.replace("bench-svc-0", &format!("bench-svc-{i}"))
            )
        })
        .collect();
    assert!(check("svc.yaml", &text));
    assert_eq!(parse_documents_fast(&text).map(|r| r.len()), Some(200));
}

/// One-line edits of a Service: each is either taken with the same result or left to the
/// `Value` path (which then gives the same errors as before).
#[test]
fn edited_services() {
    let edits: &[(&str, &str)] = &[
        ("  name: bench-svc-0\n", "  name: \"bench-svc-0\"\n"),
        ("  name: bench-svc-0\n", "  name: 'bench-svc-0'\n"),
        ("  name: bench-svc-0\n", "  name: 'it''s'\n"),
        ("  name: bench-svc-0\n", "  name: \"a\\x41\"\n"),
        ("  name: bench-svc-0\n", "  name: bench-svc-0 # a comment\n"),
        ("  name: bench-svc-0\n", "  name: bench-svc-0#x\n"),
        ("  name: bench-svc-0\n", "  name: 0123\n"),
        ("  name: bench-svc-0\n", "  name: 123\n"),
        ("  name: bench-svc-0\n", "  name:\n"),
        ("  name: bench-svc-0\n", "  name: ~\n"),
        ("  name: bench-svc-0\n", "  name: null\n"),
        ("  name: bench-svc-0\n", "  name: true\n"),
        ("  name: bench-svc-0\n", "  name: 'true'\n"),
        ("  name: bench-svc-0\n", "  name: bench\n    svc\n"),
        ("  name: bench-svc-0\n", "  name: &a bench-svc-0\n"),
        ("  name: bench-svc-0\n", "  name: !!str bench-svc-0\n"),
        ("  name: bench-svc-0\n", "  name: |\n    bench-svc-0\n"),
        (
            "  name: bench-svc-0\n",
            "  name: bench-svc-0\n  name: other\n",
        ),
        ("  name: bench-svc-0\n", "  name: Bench-Svc\n"),
        ("  name: bench-svc-0\n", "  name: a: b\n"),
        ("  name: bench-svc-0\n", "  name: x:\n"),
        ("  name: bench-svc-0\n", "  \"name\": bench-svc-0\n"),
        ("  name: bench-svc-0\n", " name: bench-svc-0\n"),
        ("  name: bench-svc-0\n", "   name: bench-svc-0\n"),
        ("  name: bench-svc-0\n", "  name : bench-svc-0\n"),
        ("  name: bench-svc-0\n", "  name:bench-svc-0\n"),
        (
            "  name: bench-svc-0\n",
            "  name: bench-svc-0\n\n  # comment\n",
        ),
        ("  name: bench-svc-0\n", "  name: \"bench-svc-0\" x\n"),
        ("  name: bench-svc-0\n", "  name: bench-svc-0\t\n"),
        ("  name: bench-svc-0\n", "  name: bénch\n"),
        ("    app: web\n", "    app: 1\n"),
        ("    app: web\n", "    app: '1'\n"),
        ("    app: web\n", "    app: 1.5\n"),
        ("    app: web\n", "    app: 1e3\n"),
        ("    app: web\n", "    app: 0x1F\n"),
        ("    app: web\n", "    app: 1_000\n"),
        ("    app: web\n", "    app: 10.0.0.1\n"),
        ("    app: web\n", "    app: true\n"),
        ("    app: web\n", "    app: nan\n"),
        ("    app: web\n", "    app: .inf\n"),
        ("    app: web\n", "    app:\n"),
        ("    app: web\n", "    1: web\n"),
        ("    app: web\n", "    <<: {a: b}\n"),
        ("    app: web\n", "    \"<<\": web\n"),
        ("    app: web\n", "    app: web\n    app: web2\n"),
        ("    app: web\n", "    app: [web]\n"),
        ("    app: web\n", "    app: {}\n"),
        ("  labels:\n    app: web\n", "  labels: {}\n"),
        ("  labels:\n    app: web\n", "  labels: {app: web}\n"),
        ("  labels:\n    app: web\n", "  labels: []\n"),
        ("  labels:\n    app: web\n", "  labels:\n"),
        ("  labels:\n    app: web\n", "  labels: ~\n"),
        ("  clusterIP: 10.96.16.0\n", "  clusterIP: 10.96.16.0.1\n"),
        ("  clusterIP: 10.96.16.0\n", "  clusterIP: \"10.96.16.0\"\n"),
        ("  clusterIP: 10.96.16.0\n", "  clusterIP: fd00::10\n"),
        ("  clusterIP: 10.96.16.0\n", "  clusterIP: None\n"),
        ("  clusterIP: 10.96.16.0\n", "  clusterIP: 10\n"),
        (
            "  clusterIP: 10.96.16.0\n",
            "  clusterIPs:\n  - 10.96.16.0\n",
        ),
        ("  clusterIP: 10.96.16.0\n", "  type: NodePort\n"),
        ("  clusterIP: 10.96.16.0\n", "  type: Nodeport\n"),
        ("  clusterIP: 10.96.16.0\n", "  type: ExternalName\n"),
        ("  clusterIP: 10.96.16.0\n", "  sessionAffinity: ClientIP\n"),
        (
            "  clusterIP: 10.96.16.0\n",
            "  publishNotReadyAddresses: True\n",
        ),
        (
            "  clusterIP: 10.96.16.0\n",
            "  publishNotReadyAddresses: yes\n",
        ),
        ("  clusterIP: 10.96.16.0\n", "  externalIPs: [1.2.3.4]\n"),
        (
            "  clusterIP: 10.96.16.0\n",
            "  externalIPs:\n  - 1.2.3.4\n  - 1.2.3\n",
        ),
        ("  clusterIP: 10.96.16.0\n", "  unknownField: 1\n"),
        ("      port: 80\n", "      port: 0\n"),
        ("      port: 80\n", "      port: 70000\n"),
        ("      port: 80\n", "      port: \"80\"\n"),
        ("      port: 80\n", "      port: 080\n"),
        ("      port: 80\n", "      port: 99999999999999999999999\n"),
        ("      port: 80\n", "      port: -80\n"),
        ("      port: 80\n", "      port: +80\n"),
        ("      port: 80\n", "      port:\n"),
        ("      targetPort: 8080\n", "      targetPort: http\n"),
        ("      targetPort: 8080\n", "      targetPort: \"8080\"\n"),
        ("      targetPort: 8080\n", "      targetPort: 3000000000\n"),
        ("      protocol: TCP\n", "      protocol: tcp\n"),
        ("      protocol: TCP\n", "      protocol: SCTP\n"),
        ("    - name: p80\n", "    -   name: p80\n"),
        ("    - name: p80\n", "    -\n      name: p80\n"),
        ("    - name: p80\n", "    - - name: p80\n"),
        ("    - name: p80\n", "    - name: p80\n    - port: 81\n"),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n  - name: p80\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n  type: NodePort\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports: [{name: p80, port: 80}]\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n    - name: p80\n       port: 80\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n    - name: p80\n     port: 80\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n    - 80\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n    -\n    - port: 80\n",
        ),
        (
            "  ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
            "  ports:\n    - port: 80\n  selector:\n    a: b\n",
        ),
        ("apiVersion: v1\n", "apiVersion: v2\n"),
        ("apiVersion: v1\n", ""),
        ("apiVersion: v1\n", "apiVersion: 1\n"),
        ("kind: Service\n", "kind: Pod\n"),
        ("kind: Service\n", "kind: WorkloadEndpoint\n"),
        ("kind: Service\n", "kind: List\n"),
        ("kind: Service\n", "kind: Service\nkind: Service\n"),
        ("kind: Service\n", "kind: Service # the kind\n"),
        ("kind: Service\n", "kind: Service\n...\n"),
        ("kind: Service\n", "kind: Service\n--- \n"),
        ("kind: Service\n", "kind: Service\n---\n"),
        ("kind: Service\n", "kind: Service\n---\n---\n"),
        ("kind: Service\n", "kind: Service\n--- {a: 1}\n"),
        ("kind: Service\n", "kind: Service\n- x\n"),
    ];
    for (i, (from, to)) in edits.iter().enumerate() {
        assert!(SERVICE.contains(from), "edit {i}: {from:?}");
        let doc = SERVICE.replacen(from, to, 1);
        // Alone, first of three, and in the middle of three documents.
        for text in [
            doc.clone(),
            format!(
                "{doc}---\n{SERVICE}---\n{}",
                SERVICE.replace("bench-svc-0", "b2")
            ),
            format!(
                "{}---\n{doc}---\n{}",
                SERVICE.replace("bench-svc-0", "b1"),
                SERVICE.replace("bench-svc-0", "b2")
            ),
            format!("  {}", doc.replace('\n', "\n  ").trim_end()),
        ] {
            check(&format!("edit {i}"), &text);
        }
    }
    // Sanity: the plain form and some edits are taken, others are not.
    assert!(parse_documents_fast(SERVICE).is_some());
    assert!(parse_documents_fast(&SERVICE.replace("app: web", "app: '1'")).is_some());
    assert!(parse_documents_fast(&SERVICE.replace("app: web", "app: 1")).is_none());
    assert!(parse_documents_fast(&SERVICE.replace("app: web", "<<: {a: b}")).is_none());
}

/// Random block YAML built from pieces that the fast path handles or must refuse.
fn scalar() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "web",
        "80",
        "0",
        "08",
        "1.5",
        "10.1.2.3",
        "10.0.0.0/8",
        "fd00::1",
        "true",
        "False",
        "null",
        "~",
        "''",
        "\"\"",
        "'a b'",
        "\"x: y\"",
        "a b",
        "TCP",
        "UDP",
        "ClusterIP",
        "NodePort",
        "None",
        "{}",
        "[]",
        "x # c",
        "-1",
        "+1",
        "0x10",
        "1e3",
        "a:b",
        "http",
        "65536",
        "30080",
        "Local",
        "ClientIP",
        "yes",
        "'80'",
        "\"it's\"",
        "&a x",
        "*a",
        "!t x",
        "|",
        "[a]",
        "{a: b}",
        "a:",
        "a: b",
        "\"a\\\"b\"",
        "'a''b'",
        "nan",
        ".nan",
        "Inf",
    ])
    .prop_map(str::to_string)
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "name",
        "namespace",
        "labels",
        "app",
        "port",
        "targetPort",
        "protocol",
        "nodePort",
        "selector",
        "ports",
        "clusterIP",
        "type",
        "spec",
        "metadata",
        "1",
        "\"port\"",
        "'name'",
        "<<",
        "a.b/c",
        "sessionAffinity",
        "externalIPs",
        "clusterIPs",
        "? x",
        "app",
    ])
    .prop_map(str::to_string)
}

#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    Map(Vec<(String, Tree)>),
    Seq(Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    scalar()
        .prop_map(Tree::Scalar)
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec((key(), inner.clone()), 0..4).prop_map(Tree::Map),
                prop::collection::vec(inner, 0..3).prop_map(Tree::Seq),
            ]
        })
}

/// Writes `t` as block YAML at `indent`; `jitter` picks the odd indentation choices.
fn render(t: &Tree, indent: usize, jitter: &mut impl Iterator<Item = u8>, out: &mut String) {
    let pad = " ".repeat(indent);
    match t {
        Tree::Scalar(s) => out.push_str(&format!(" {s}\n")),
        Tree::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Tree::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Tree::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                let extra = usize::from(jitter.next().unwrap_or(0) == 7);
                out.push_str(&format!("{pad}{}{k}:", " ".repeat(extra)));
                render(v, indent + 2, jitter, out);
            }
        }
        Tree::Seq(items) => {
            out.push('\n');
            // Entries at the key's column or indented under it.
            let same = jitter.next().unwrap_or(0).is_multiple_of(2) && indent >= 2;
            let col = if same { indent - 2 } else { indent };
            for item in items {
                out.push_str(&format!("{}-", " ".repeat(col)));
                render(item, col + 2, jitter, out);
            }
        }
    }
}

/// 512 cases unless `PROPTEST_CASES` asks for another number (a fixed `with_cases` would
/// ignore it).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_block_yaml(
        spec in tree(),
        labels in prop::collection::vec((key(), scalar()), 0..3),
        jitter in prop::collection::vec(0u8..8, 64),
    ) {
        let mut text = String::from("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n");
        if !labels.is_empty() {
            text.push_str("  labels:\n");
            for (k, v) in &labels {
                text.push_str(&format!("    {k}: {v}\n"));
            }
        }
        text.push_str("spec:");
        let mut j = jitter.into_iter();
        render(&spec, 2, &mut j, &mut text);
        check("random", &text);
        check("random-2", &format!("{text}---\n{SERVICE}"));
    }
}

/// Service-shaped documents with each field drawn from valid and invalid spellings, so that
/// both outcomes (taken with the same resources, or left to the `Value` path) are exercised.
fn field(choices: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(choices)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_services(
        name in field(&["web", "'web'", "\"web\"", "web # c", "Web", "1web", "", "~", "w-1"]),
        ns in field(&["default", "'shop'", "", "x_y", "null"]),
        label in field(&["app: web", "app: '80'", "app: 80", "'app': web", "a.b/c: d", "app:", "{}"]),
        cip in field(&["10.96.0.1", "\"10.96.0.1\"", "None", "10.96.0", "fd00::1", "1.5", ""]),
        type_ in field(&["ClusterIP", "NodePort", "LoadBalancer", "Nodeport", "'NodePort'", ""]),
        port in field(&["80", "'80'", "0", "65536", "080", "http", "8_0", "443 # https"]),
        target in field(&["8080", "http", "'8080'", "-1", "", "0x50"]),
        proto in field(&["TCP", "UDP", "SCTP", "tcp", "'TCP'", ""]),
        dash in field(&["    - ", "  - ", "    -   "]),
        extra in field(&["", "  publishNotReadyAddresses: true\n", "  sessionAffinity: ClientIP\n",
                         "  externalIPs:\n  - 192.0.2.1\n", "  bogus: 1\n", "  ports: []\n"]),
    ) {
        let pad = " ".repeat(dash.len());
        let mut text = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n");
        if !ns.is_empty() {
            text.push_str(&format!("  namespace: {ns}\n"));
        }
        text.push_str(&format!("  labels:\n    {label}\nspec:\n"));
        if !cip.is_empty() {
            text.push_str(&format!("  clusterIP: {cip}\n"));
        }
        if !type_.is_empty() {
            text.push_str(&format!("  type: {type_}\n"));
        }
        text.push_str(&format!("  ports:\n{dash}port: {port}\n"));
        if !target.is_empty() {
            text.push_str(&format!("{pad}targetPort: {target}\n"));
        }
        if !proto.is_empty() {
            text.push_str(&format!("{pad}protocol: {proto}\n"));
        }
        text.push_str(extra);
        check("service", &text);
        check("services", &format!("{SERVICE}---\n{text}---\n"));
    }
}

/// Review cases: odd lines inside a Service (empty keys, complex keys, comments and markers in
/// odd places, scalars serde_yaml_ng types in ways easy to get wrong); each must give what the
/// `Value` path gives, and none may panic.
#[test]
fn review_edge_cases() {
    let edits: &[(&str, &str)] = &[
        ("    app: web\n", "    : web\n"),
        ("    app: web\n", "    :\n"),
        ("    app: web\n", "    ': web'\n"),
        ("    app: web\n", "    \"\": web\n"),
        ("    app: web\n", "    '': web\n"),
        ("    app: web\n", "    ? app\n    : web\n"),
        ("    app: web\n", "    ?app: web\n"),
        ("    app: web\n", "    app: web\n    \"app\": web\n"),
        ("    app: web\n", "    app: web\n    'app': web\n"),
        ("    app: web\n", "    0123: web\n"),
        ("    app: web\n", "    \"0123\": web\n"),
        ("    app: web\n", "    true: web\n"),
        ("    app: web\n", "    'true': web\n"),
        ("    app: web\n", "    null: web\n"),
        ("    app: web\n", "    ~: web\n"),
        ("    app: web\n", "    inf: web\n"),
        ("    app: web\n", "    1e3: web\n"),
        ("    app: web\n", "    1a: web\n"),
        ("    app: web\n", "    0x1: web\n"),
        ("    app: web\n", "    a b: web\n"),
        ("    app: web\n", "    a:b: web\n"),
        ("    app: web\n", "    a#b: web\n"),
        ("    app: web\n", "    app: 'true'\n"),
        ("    app: web\n", "    app: \"null\"\n"),
        ("    app: web\n", "    app: ''\n"),
        ("    app: web\n", "    app: '''\n"),
        ("    app: web\n", "    app: 'a''b'\n"),
        ("    app: web\n", "    app: 'a\\b'\n"),
        ("    app: web\n", "    app: \"a'b\"\n"),
        ("    app: web\n", "    app: 'a\"b'\n"),
        ("    app: web\n", "    app: \"a # b\"\n"),
        ("    app: web\n", "    app: \"a: b\"\n"),
        ("    app: web\n", "    app: \"a\"#b\n"),
        ("    app: web\n", "    app: 'a' # b\n"),
        ("    app: web\n", "    app: \"a\n    b\"\n"),
        ("    app: web\n", "    app: yes\n"),
        ("    app: web\n", "    app: on\n"),
        ("    app: web\n", "    app: off\n"),
        ("    app: web\n", "    app: y\n"),
        ("    app: web\n", "    app: tRUE\n"),
        ("    app: web\n", "    app: NULL\n"),
        ("    app: web\n", "    app: Null\n"),
        ("    app: web\n", "    app: inf\n"),
        ("    app: web\n", "    app: Infinity\n"),
        ("    app: web\n", "    app: NaN\n"),
        ("    app: web\n", "    app: .NaN\n"),
        ("    app: web\n", "    app: -.inf\n"),
        ("    app: web\n", "    app: 0o17\n"),
        ("    app: web\n", "    app: 0O17\n"),
        ("    app: web\n", "    app: 0X1F\n"),
        ("    app: web\n", "    app: 0b101\n"),
        ("    app: web\n", "    app: 0\n"),
        ("    app: web\n", "    app: 00\n"),
        ("    app: web\n", "    app: 007\n"),
        ("    app: web\n", "    app: 0.\n"),
        ("    app: web\n", "    app: 1.\n"),
        ("    app: web\n", "    app: 01.5\n"),
        ("    app: web\n", "    app: 1E3\n"),
        ("    app: web\n", "    app: 1e\n"),
        ("    app: web\n", "    app: 1 2\n"),
        ("    app: web\n", "    app: 12:30\n"),
        ("    app: web\n", "    app: 1-2\n"),
        ("    app: web\n", "    app: 1_0.5\n"),
        ("    app: web\n", "    app: 18446744073709551616\n"),
        ("    app: web\n", "    app: -\n"),
        ("    app: web\n", "    app: -x\n"),
        ("    app: web\n", "    app: :\n"),
        ("    app: web\n", "    app: :x\n"),
        ("    app: web\n", "    app: x:y\n"),
        ("    app: web\n", "    app: a,b[c]{d}\n"),
        ("    app: web\n", "    app: '{}'\n"),
        ("    app: web\n", "    app: {} # c\n"),
        ("    app: web\n", "    app: [] x\n"),
        ("    app: web\n", "    app: @x\n"),
        ("    app: web\n", "    app: `x\n"),
        ("    app: web\n", "    app: *a\n"),
        ("    app: web\n", "    app: %x\n"),
        ("    app: web\n", "    app: ?x\n"),
        ("    app: web\n", "    app: >\n      web\n"),
        ("    app: web\n", "    app:    web   \n"),
        ("    app: web\n", "    app: web  # c: d\n"),
        ("    app: web\n", "    app: web #\n"),
        ("    app: web\n", "    app: #\n      x: y\n"),
        ("    app: web\n", "    app: web\n#c\n"),
        ("    app: web\n", "    app: web\n# c\n      # c\n"),
        ("    app: web\n", "    app: web\n  ---\n"),
        ("    app: web\n", "    app: web\n---x\n"),
        ("    app: web\n", "    app: web\n...x\n"),
        ("    app: web\n", "    app: web\n--- # c\n"),
        ("    app: web\n", "    app: web\n---\t\n"),
        (
            "    app: web\n",
            &"    app: x\n".replace('x', &"w".repeat(5000)),
        ),
        (
            "    app: web\n",
            &"    x: web\n".replace('x', &"k".repeat(1000)),
        ),
        (
            "    app: web\n",
            &"    x: web\n".replace('x', &"k".repeat(1001)),
        ),
        (
            "    app: web\n",
            &"    'x': web\n".replace('x', &"k".repeat(1000)),
        ),
        (
            "    app: web\n",
            &"    'x': web\n".replace('x', &"k".repeat(1030)),
        ),
        ("  name: bench-svc-0\n", "  name: 0123\n"),
        ("  name: bench-svc-0\n", "  name: 1e3\n"),
        ("  name: bench-svc-0\n", "  name: -\n"),
        ("  name: bench-svc-0\n", "  name: a\n  ---\n"),
        ("      port: 80\n", "      port: 0x50\n"),
        ("      port: 80\n", "      port: 0o120\n"),
        ("      port: 80\n", "      port: 80.0\n"),
        ("      port: 80\n", "      port: 8_0\n"),
        ("      port: 80\n", "      port: '80'\n"),
        ("    - name: p80\n", "    - name: p80\n    -\n"),
        ("    - name: p80\n", "    - # c\n      name: p80\n"),
        ("    - name: p80\n", "    -  # c\n      name: p80\n"),
        ("    - name: p80\n", "    -# c\n      name: p80\n"),
        ("    - name: p80\n", "    - ? name\n      : p80\n"),
        ("    - name: p80\n", "    - 'name': p80\n"),
        ("    - name: p80\n", "    - 'name':p80\n"),
        ("    - name: p80\n", "    - name: p80\n   - port: 81\n"),
        (
            "  ports:\n    - name: p80\n",
            "  ports:\n  - name: p80\n  # c\n",
        ),
        (
            "  selector:\n    bench-role: backend\n",
            "  selector:\n  - bench-role\n",
        ),
        (
            "  selector:\n    bench-role: backend\n",
            "  selector: # c\n    bench-role: backend # c\n",
        ),
        ("apiVersion: v1\n", "\"apiVersion\": \"v1\"\n"),
        ("apiVersion: v1\n", "apiVersion: 'v1'\n"),
        ("apiVersion: v1\n", "apiVersion: v1\napiVersion: v1\n"),
        ("apiVersion: v1\n", "%YAML 1.2\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "\u{feff}apiVersion: v1\n"),
        ("apiVersion: v1\n", "apiVersion: v1\r\n"),
        ("apiVersion: v1\n", "# c\napiVersion: v1\n"),
        ("apiVersion: v1\n", "--- # c\napiVersion: v1\n"),
        ("apiVersion: v1\n", "---\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "null\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "~\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "{}\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "- a\n---\napiVersion: v1\n"),
        ("apiVersion: v1\n", "x\n---\napiVersion: v1\n"),
    ];
    for (i, (from, to)) in edits.iter().enumerate() {
        assert!(SERVICE.contains(from), "edit {i}: {from:?}");
        let doc = SERVICE.replacen(from, to, 1);
        for text in [
            doc.clone(),
            format!("{}---\n{doc}", SERVICE.replace("bench-svc-0", "b1")),
            format!("  {}", doc.replace('\n', "\n  ").trim_end()),
        ] {
            check(&format!("review edit {i}: {to:?}"), &text);
        }
    }
    // A big label map (past the fast path's entry limit) and one just under it.
    for n in [256, 257, 300] {
        let labels: String = (0..n).map(|i| format!("    l{i}: v{i}\n")).collect();
        let text = SERVICE.replacen("    app: web\n", &labels, 1);
        let taken = check(&format!("{n} labels"), &text);
        assert_eq!(taken, n <= 256, "{n} labels");
    }
    // Bare lines alone: none may panic, each agrees with the `Value` path.
    for text in [
        ":", ": x", "- : x", "-", "- -", "---", "--- ", "'", "\"", "'a", "a: '", "a: \"b", "?",
        "? ", "#", "a:", "a: b\n:", "- a\n:", " : x", "x\n : y", "\n\n", "",
    ] {
        check(&format!("bare {text:?}"), text);
    }
}

/// Pieces of YAML syntax spliced into a Service at random places.
const MUTATIONS: &[&str] = &[
    ":", ": ", " ", "  ", "-", "- ", "#", " #", "'", "''", "\"", "\n", "\n  ", "\n- ", "0", "1",
    "?", "? ", "{", "}", "[", "]", "{}", "[]", ",", "---", "\n---\n", "...", "~", "&a ", "*a", "!",
    "|", ">", "%", "@", "`", "e", "E3", ".", "+", "_", "x", "\\", "true", "null", ".inf", "0x",
    "0o", "\r", "\t", "\u{e9}", "\u{feff}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A Service with a few random splices and deletions: whatever the fast path takes, the
    /// `Value` path gives the same; nothing panics.
    #[test]
    fn mutated_services(
        edits in prop::collection::vec(
            (0usize..10_000, prop::sample::select(MUTATIONS), 0usize..3),
            1..4,
        ),
    ) {
        let mut text = SERVICE.to_string();
        for (at, piece, cut) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(at..end, piece);
        }
        check("mutated", &text);
        check("mutated-2", &format!("{SERVICE}---\n{text}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Random scalars where any string is valid (an annotation value, checked by nothing but
    /// its type): the scalar typing of the fast path (null, bool, int, float, string, quoting,
    /// comments) against serde_yaml_ng's.
    #[test]
    fn random_annotation_values(
        value in "[ :#'\"0-9.eExob+_~nulrtfaNIF{}\\[\\],&*!|>%@`?\\\\-]{0,10}",
        quoted_key in any::<bool>(),
    ) {
        let key = if quoted_key { "'note'" } else { "note" };
        let text = SERVICE.replacen(
            "  labels:\n",
            &format!("  annotations:\n    {key}: {value}\n  labels:\n"),
            1,
        );
        check("annotation", &text);
    }
}

/// Pieces of lines for [`random_annotation_blocks`].
const BLOCK_PIECES: &[&str] = &[
    "    a: x\n",
    "    b:",
    "    c",
    "y",
    "1",
    "\n",
    " ",
    "  ",
    "- ",
    "-",
    ":",
    ": ",
    "#",
    " #",
    "'",
    "\"",
    "---\n",
    "? ",
    "{}",
    "[]",
    "~",
    "\n  ",
    "\n      ",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Random lines inside an annotations block (whose values take any string): the block
    /// structure (indentation, dashes, empty values, comments, markers) against the `Value`
    /// path.
    #[test]
    fn random_annotation_blocks(pieces in prop::collection::vec(prop::sample::select(BLOCK_PIECES), 0..14)) {
        let block: String = pieces.concat();
        let text = SERVICE.replacen(
            "  labels:\n",
            &format!("  annotations:\n{block}\n  labels:\n"),
            1,
        );
        check("annotation block", &text);
    }
}
