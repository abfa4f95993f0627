//! `Resource::from_json` (the fast path straight into typed resources) against
//! `Resource::from_json_reference` (through `serde_json::Value`): the same resource or the
//! same error for every input: each resource of the repository's YAML files as stored, random
//! resources, and stored documents with random damage (unknown fields, missing fields, nulls,
//! wrong types, duplicate keys, repeated `apiVersion`/`kind`, other layouts).

use std::path::{Path, PathBuf};

use serde_json::Value;
use serval_model::{Resource, parse_documents};

/// SplitMix64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Both paths on `bytes`: the same resource, or errors with the same message.
fn assert_same(bytes: &[u8], what: &str) -> bool {
    let fast = Resource::from_json(bytes);
    let reference = Resource::from_json_reference(bytes);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(
            a,
            b,
            "{what}: the paths decode differently:\n{}",
            String::from_utf8_lossy(bytes)
        ),
        (Err(a), Err(b)) => assert_eq!(
            a.to_string(),
            b.to_string(),
            "{what}: the paths fail differently:\n{}",
            String::from_utf8_lossy(bytes)
        ),
        _ => panic!(
            "{what}: fast {fast:?}, reference {reference:?}:\n{}",
            String::from_utf8_lossy(bytes)
        ),
    }
    reference.is_ok()
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
        if p.is_dir() {
            // `work`: the bench's scratch directories (git-ignored, absent from a clean clone).
            if e.file_name() != "work" {
                yaml_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// Every mapping with string `apiVersion` and `kind` anywhere in `v` (scenario files embed
/// resources in their steps).
fn embedded_resources(v: &serde_yaml_ng::Value, out: &mut Vec<serde_yaml_ng::Value>) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            if v.get("apiVersion").is_some_and(|a| a.is_string())
                && v.get("kind").is_some_and(|k| k.is_string())
            {
                out.push(v.clone());
            }
            for (_, x) in m {
                embedded_resources(x, out);
            }
        }
        serde_yaml_ng::Value::Sequence(s) => s.iter().for_each(|x| embedded_resources(x, out)),
        serde_yaml_ng::Value::Tagged(t) => embedded_resources(&t.value, out),
        _ => {}
    }
}

/// The stored JSON of every resource in the repository's YAML files (tests, examples, docs),
/// at most 500 documents a file; plus each embedded document as raw JSON (not defaulted, not
/// validated), which the decoders see when older or hand-written data is stored.
fn fixture_values() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["examples", "docs"] {
        yaml_files(&root.join(dir), &mut files);
    }
    for krate in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        yaml_files(&krate.path().join("tests"), &mut files);
    }
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    let mut stored = Vec::new();
    let mut raw = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read fixture");
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text).take(500) {
            match serde::Deserialize::deserialize(doc) {
                Ok(v) => embedded_resources(&v, &mut docs),
                Err(_) => break,
            }
        }
        for d in docs {
            if let Ok(json) = serde_json::to_vec(&d) {
                raw.push(json);
            }
            let yaml = serde_yaml_ng::to_string(&d).expect("YAML re-serializes");
            if let Ok(rs) = parse_documents("fixture", &yaml) {
                stored.extend(rs.iter().map(Resource::to_json));
            }
        }
    }
    (stored, raw)
}

fn random_labels(rng: &mut Rng) -> String {
    let n = rng.below(4);
    let keys = ["app", "role", "tier", "k8s.io/name", "x"];
    let first = rng.below(keys.len());
    let kv: Vec<String> = (0..n)
        .map(|i| {
            let value = rng.pick(&["web", "db", "\"1\"", "a-b", "z"]);
            format!("{}: {value}", keys[(first + i) % keys.len()])
        })
        .collect();
    format!("{{{}}}", kv.join(", "))
}

fn random_service(rng: &mut Rng, i: usize) -> String {
    let ty = *rng.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
    let v6 = rng.chance(30);
    let ip = if v6 {
        format!("fd00:96::{:x}", i + 1)
    } else {
        format!("10.96.{}.{}", i / 250, i % 250 + 1)
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  labels: {}\n",
        random_labels(rng)
    );
    if rng.chance(50) {
        y += &format!(
            "  namespace: {}\n",
            rng.pick(&["default", "x", "kube-system"])
        );
    }
    y += &format!("spec:\n  type: {ty}\n");
    if rng.chance(70) {
        y += &format!("  clusterIP: {ip}\n");
    }
    if rng.chance(30) {
        y += &format!("  ipFamilies: [{}]\n", if v6 { "IPv6" } else { "IPv4" });
    }
    y += &format!("  selector: {}\n  ports:\n", random_labels(rng));
    for p in 0..=rng.below(3) {
        y += &format!(
            "  - name: p{p}\n    protocol: {}\n    port: {}\n",
            rng.pick(&["TCP", "UDP", "SCTP"]),
            80 + p
        );
        match rng.below(3) {
            0 => y += &format!("    targetPort: {}\n", 8080 + rng.below(100)),
            1 => y += "    targetPort: http\n",
            _ => {}
        }
        if ty != "ClusterIP" && rng.chance(50) {
            y += &format!("    nodePort: {}\n", 30000 + rng.below(2000));
        }
    }
    if rng.chance(20) {
        y += "  sessionAffinity: ClientIP\n";
        if rng.chance(50) {
            y += "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
        }
    }
    if ty != "ClusterIP" && rng.chance(50) {
        y += &format!(
            "  externalTrafficPolicy: {}\n",
            rng.pick(&["Cluster", "Local"])
        );
    }
    if rng.chance(20) {
        y += &format!(
            "  internalTrafficPolicy: {}\n",
            rng.pick(&["Cluster", "Local"])
        );
    }
    if !v6 && rng.chance(20) {
        y += &format!("  externalIPs: [192.0.2.{}]\n", i % 250 + 1);
    }
    if rng.chance(10) {
        y += "  publishNotReadyAddresses: true\n";
    }
    y
}

fn random_pod(rng: &mut Rng, i: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: {}\n  labels: {}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: c\n",
        rng.pick(&["default", "x", "y"]),
        random_labels(rng),
        rng.below(3)
    );
    if rng.chance(70) {
        y += "    ports:\n";
        for p in 0..=rng.below(2) {
            y += &format!(
                "    - name: port-{p}\n      containerPort: {}\n      protocol: {}\n",
                80 + p,
                rng.pick(&["TCP", "UDP"])
            );
        }
    }
    y
}

fn random_namespace(rng: &mut Rng, i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{i}\n  labels: {}\n",
        random_labels(rng)
    )
}

/// Stored JSON of random valid Services, Pods and Namespaces.
fn random_values(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let y = match rng.below(3) {
            0 => random_service(&mut rng, i),
            1 => random_pod(&mut rng, i),
            _ => random_namespace(&mut rng, i),
        };
        match parse_documents("random", &y) {
            Ok(rs) => out.extend(rs.iter().map(Resource::to_json)),
            Err(e) => panic!("generator wrote a bad document: {e}\n{y}"),
        }
    }
    out
}

#[test]
fn every_fixture_resource_decodes_the_same_on_both_paths() {
    let (stored, raw) = fixture_values();
    assert!(
        // A clean clone has ~80 (scenario steps included).
        stored.len() > 60,
        "only {} fixture resources",
        stored.len()
    );
    for (i, bytes) in stored.iter().enumerate() {
        assert!(
            assert_same(bytes, &format!("fixture {i}")),
            "stored data decodes"
        );
        let r = Resource::from_json(bytes).expect("decodes");
        assert_eq!(r.to_json(), *bytes, "fixture {i} round-trips");
    }
    for (i, bytes) in raw.iter().enumerate() {
        assert_same(bytes, &format!("raw fixture document {i}"));
    }
}

#[test]
fn random_resources_decode_the_same_on_both_paths() {
    for seed in 0..4 {
        for (i, bytes) in random_values(seed, 300).iter().enumerate() {
            assert!(assert_same(bytes, &format!("seed {seed} resource {i}")));
        }
    }
}

/// Writes `v` as compact JSON with `apiVersion` and `kind` first at the top (the stored
/// layout, so the fast path is tried), optionally repeating one key of one object.
fn write_stored(v: &Value, dup: Option<(&str, &Value)>, out: &mut Vec<u8>) {
    let Value::Object(m) = v else {
        out.extend(serde_json::to_vec(v).expect("json"));
        return;
    };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "apiVersion", k.as_str() != "kind"));
    out.push(b'{');
    let mut first = true;
    for k in keys {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend(serde_json::to_vec(k).expect("json"));
        out.push(b':');
        write_stored(&m[k], None, out);
    }
    if let Some((k, dv)) = dup {
        if !first {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(k).expect("json"));
        out.push(b':');
        out.extend(serde_json::to_vec(dv).expect("json"));
    }
    out.push(b'}');
}

/// A path to a random node of `v` (object keys and array indexes).
fn random_path(rng: &mut Rng, v: &Value) -> Vec<Value> {
    let mut path = Vec::new();
    let mut cur = v;
    loop {
        let next = match cur {
            Value::Object(m) if !m.is_empty() && rng.chance(75) => {
                let k = m.keys().nth(rng.below(m.len())).expect("key");
                path.push(Value::String(k.clone()));
                &m[k]
            }
            Value::Array(a) if !a.is_empty() && rng.chance(75) => {
                let i = rng.below(a.len());
                path.push(Value::from(i));
                &a[i]
            }
            _ => return path,
        };
        cur = next;
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |cur, step| match step {
        Value::String(k) => &mut cur[k.as_str()],
        _ => &mut cur[step.as_u64().expect("index") as usize],
    })
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => Value::from(rng.below(70000)),
        3 => Value::from(-(rng.below(5) as i64) - 1),
        4 => serde_json::json!(80.5),
        5 => serde_json::json!(1e300),
        6 => Value::from(u64::MAX),
        7 => Value::String("TCP".into()),
        8 => Value::String("10.0.0.0/8".into()),
        9 => Value::String("weird \"quoted\" \\ \u{e9}".into()),
        10 => serde_json::json!([]),
        _ => serde_json::json!({}),
    }
}

/// One random change to a stored document.
fn mutate(rng: &mut Rng, v: &mut Value) -> Option<(String, Value)> {
    let path = random_path(rng, v);
    match rng.below(9) {
        // Remove the node.
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last().expect("non-empty");
            match (node_mut(v, parent), last) {
                (Value::Object(m), Value::String(k)) => {
                    m.remove(k);
                }
                (Value::Array(a), i) => {
                    a.remove(i.as_u64().expect("index") as usize);
                }
                _ => {}
            }
        }
        // An unknown field in some object.
        1 => {
            if let Value::Object(m) = node_mut(v, &path) {
                m.insert("zzUnknown".into(), random_scalar(rng));
            }
        }
        // A duplicate key in the top-level object.
        2 => {
            if let Value::Object(m) = &*v
                && !m.is_empty()
            {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = rng.pick(&keys).clone();
                let dv = if rng.chance(50) {
                    m[&k].clone()
                } else {
                    random_scalar(rng)
                };
                return Some((k, dv));
            }
        }
        // A repeated apiVersion or kind, with the same or another value.
        3 => {
            let k = rng.pick(&["apiVersion", "kind"]).to_string();
            let dv = match rng.below(3) {
                0 => v[k.as_str()].clone(),
                1 => Value::String(
                    rng.pick(&["v1", "Pod", "Service", "projectcalico.org/v3"])
                        .to_string(),
                ),
                _ => random_scalar(rng),
            };
            return Some((k, dv));
        }
        // Emptied containers.
        4 => match node_mut(v, &path) {
            Value::Object(m) => m.clear(),
            Value::Array(a) => a.clear(),
            n => *n = Value::Null,
        },
        // Anything else: a null or a value of another type in its place.
        _ => *node_mut(v, &path) = random_scalar(rng),
    }
    None
}

#[test]
fn damaged_documents_decode_or_fail_the_same_on_both_paths() {
    let (mut values, _) = fixture_values();
    values.extend(random_values(99, 200));
    let mut rng = Rng(7);
    let mut decoded = 0;
    let mut failed = 0;
    for (i, bytes) in values.iter().enumerate() {
        let original: Value = serde_json::from_slice(bytes).expect("stored JSON");
        for round in 0..6 {
            let mut v = original.clone();
            let mut dup = None;
            for _ in 0..=rng.below(2) {
                dup = mutate(&mut rng, &mut v).or(dup);
            }
            let mut out = Vec::new();
            write_stored(&v, dup.as_ref().map(|(k, dv)| (k.as_str(), dv)), &mut out);
            if assert_same(&out, &format!("document {i} round {round}")) {
                decoded += 1;
            } else {
                failed += 1;
            }
        }
    }
    // Both outcomes are exercised, so neither comparison is vacuous.
    assert!(
        decoded > 100 && failed > 100,
        "{decoded} decoded, {failed} failed"
    );
}

#[test]
fn edge_cases_decode_or_fail_the_same_on_both_paths() {
    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"default"},"spec":{"ports":[{"port":80}]}}"#;
    let cases: &[&str] = &[
        svc,
        // Whitespace, another key order, pretty printing: not the stored layout.
        &svc.replace(',', ", "),
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"a"}}"#,
        "\n{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"a\"}}\n",
        // Missing optional fields; missing namespace gets the default.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{}}"#,
        // Missing required fields.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{}}"#,
        r#"{"apiVersion":"v1","kind":"Service"}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{}]}}"#,
        // Nulls.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":null},"spec":{"clusterIP":null}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":null}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":null}}"#,
        r#"{"apiVersion":null,"kind":"Service","metadata":{"name":"a"}}"#,
        // Unknown fields (top level, nested).
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"extra":1}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","extra":{}}}"#,
        // Wrong types.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":7}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":"80"}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80.0}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":0}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"type":"Bogus"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":[]}"#,
        r#"{"apiVersion":1,"kind":"Service","metadata":{"name":"a"}}"#,
        // Duplicate keys: the Value path keeps the last.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"metadata":{"name":"b"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","labels":{"x":"1","x":"2"}}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"kind":"Service"}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"kind":"Pod"}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"apiVersion":"v2"}"#,
        // Escapes in the type and elsewhere.
        r#"{"apiVersion":"v\u0031","kind":"Service","metadata":{"name":"a"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a\u0062","labels":{"k\"":"\u00e9"}}}"#,
        // Unknown or internal kinds, not JSON, not an object, trailing data.
        r#"{"apiVersion":"v1","kind":"Nope","metadata":{"name":"a"}}"#,
        r#"{"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint","metadata":{"name":"a"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}} x"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}{}"#,
        r#"[1,2]"#,
        "",
        "null",
        // Numbers: big integers (f64 on both paths), negative zero, exponents, out of range.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":18446744073709551616}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":-0}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":8e1}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80,"targetPort":2147483648}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80,"targetPort":-1}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80,"targetPort":"http"}]}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{"order":1e400}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{"order":18446744073709551616}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{"order":-0.0}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{"order":"5"}}"#,
        // A unit enum variant spelled as a map; a duplicate inside a custom map visitor.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"type":{"NodePort":null}}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"type":{"NodePort":null,"NodePort":null}}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"FelixConfiguration","metadata":{"name":"default"},"spec":{"failsafeInboundHostPorts":[{"port":22,"port":23}]}}"#,
        r#"{"apiVersion":"projectcalico.org/v3","kind":"FelixConfiguration","metadata":{"name":"default"},"spec":{"failsafeInboundHostPorts":[{"port":22},"udp:53"]}}"#,
        // Duplicate map keys spelled differently (escape), lone surrogates, an escaped key.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","labels":{"x":"1","\u0078":"2"}}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a\ud800"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a\udc00\ud800"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"na\u006de":"a"}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"\u006bind":"Service"}"#,
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_same(c.as_bytes(), &format!("edge case {i}"));
    }
    let r = Resource::from_json(svc.as_bytes()).expect("decodes");
    assert_eq!(r.meta().name, "a");
    // Invalid UTF-8 inside a string.
    let mut bad = svc.as_bytes().to_vec();
    let at = bad.iter().position(|&b| b == b'a').expect("name");
    bad[at] = 0xff;
    assert_same(&bad, "invalid UTF-8");
    // Invalid UTF-8 in a key, in a label value, and a sequence cut short at the very end
    // (the fast path checks the whole document at once, then reads it as text).
    let labels =
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","labels":{"k":"v\u00e9"}}}"#;
    for (find, with) in [
        (&b"\"k\""[..], &b"\"\xc3\""[..]),
        (b"v\\u00e9", b"v\xe9\xa9"),
        (b"v\\u00e9", b"v\xed\xa0\x80"),
    ] {
        let mut doc = labels.as_bytes().to_vec();
        let at = doc
            .windows(find.len())
            .position(|w| w == find)
            .expect("in the document");
        doc.splice(at..at + find.len(), with.iter().copied());
        assert_same(&doc, "invalid UTF-8 in a key or value");
    }
    let mut cut = svc.as_bytes().to_vec();
    cut.push(0xc3);
    assert_same(&cut, "a cut UTF-8 sequence after the document");
    // Valid multi-byte UTF-8 (not escaped) decodes the same.
    let multi = labels.replace("\\u00e9", "é✓𝄞");
    assert!(assert_same(multi.as_bytes(), "multi-byte UTF-8"));
    // Nesting deeper than serde_json's recursion limit, where a field holds a list.
    for depth in [100, 126, 127, 128, 129, 300] {
        let doc = format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"a"}},"spec":{{"ports":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_same(doc.as_bytes(), &format!("nesting {depth}"));
    }
}
