//! Printing resources: tables (like kubectl and calicoctl), YAML and JSON.
//!
//! Table columns are JSON paths into the stored form, so the printer depends only on the
//! resource's wire shape (Kubernetes and Calico field names), not on Rust field names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::Value;
use serval_api::Client;
use serval_model::{Kind, Resource, ResourceKey};

/// `pods/web` or `pods/web -n prod` style identification, as kubectl prints it.
pub fn key_display(key: &ResourceKey) -> String {
    let info = key.kind.info();
    let group = info
        .api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let kind = if group.is_empty() {
        info.name.to_ascii_lowercase()
    } else {
        format!("{}.{group}", info.name.to_ascii_lowercase())
    };
    match &key.namespace {
        Some(ns) => format!("{kind}/{} (namespace {ns})", key.name),
        None => format!("{kind}/{}", key.name),
    }
}

fn value_of(r: &Resource) -> Value {
    serde_json::from_slice(&r.to_json()).unwrap_or(Value::Null)
}

pub fn to_json(items: &[Resource], single: bool) -> anyhow::Result<String> {
    let vals: Vec<Value> = items.iter().map(value_of).collect();
    let v = if single {
        vals.into_iter().next().unwrap_or(Value::Null)
    } else {
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": vals })
    };
    Ok(serde_json::to_string_pretty(&v)?)
}

pub fn to_yaml(items: &[Resource], single: bool) -> anyhow::Result<String> {
    let vals: Vec<Value> = items.iter().map(value_of).collect();
    let v = if single {
        vals.into_iter().next().unwrap_or(Value::Null)
    } else {
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": vals })
    };
    Ok(serde_yaml_ng::to_string(&v)?)
}

/// Data from other resources that some tables show (a pod's IPs come from its workload
/// endpoint).
#[derive(Debug, Default)]
pub struct Extra {
    /// `namespace/pod` → workload endpoint JSON.
    endpoints: BTreeMap<String, Value>,
}

impl Extra {
    pub async fn load(client: &Client, kind: Kind, wide: bool) -> anyhow::Result<Extra> {
        let mut extra = Extra::default();
        if kind == Kind::Pod {
            let _ = wide;
            let (weps, _) = client.list(Kind::WorkloadEndpoint, None).await?;
            for w in &weps {
                let v = value_of(w);
                let ns = str_at(&v, "metadata.namespace");
                let pod = str_at(&v, "spec.pod");
                extra.endpoints.insert(format!("{ns}/{pod}"), v);
            }
        }
        Ok(extra)
    }
}

/// Render a table. `with_ns` adds a NAMESPACE column.
pub fn table(kind: Kind, items: &[Resource], with_ns: bool, wide: bool, extra: &Extra) -> String {
    let cols = columns(kind, wide);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    if with_ns {
        header.push("NAMESPACE".into());
    }
    header.push("NAME".into());
    header.extend(cols.iter().map(|c| c.0.to_string()));
    header.push("AGE".into());
    rows.push(header);
    let now = SystemTime::now();
    for r in items {
        let v = value_of(r);
        let mut row = Vec::new();
        if with_ns {
            row.push(r.meta().namespace.clone().unwrap_or_default());
        }
        row.push(r.meta().name.clone());
        for (_, f) in &cols {
            let cell = f(&v, extra);
            row.push(if cell.is_empty() {
                "<none>".into()
            } else {
                cell
            });
        }
        row.push(age(r, now));
        rows.push(row);
    }
    let ncols = rows[0].len();
    let widths: Vec<usize> = (0..ncols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == ncols {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn age(r: &Resource, now: SystemTime) -> String {
    let Some(ts) = &r.meta().creation_timestamp else {
        return "<unknown>".into();
    };
    let Ok(t) = humantime::parse_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

type Column = (&'static str, Box<dyn Fn(&Value, &Extra) -> String>);

fn col(name: &'static str, path: &'static str) -> Column {
    (name, Box::new(move |v, _| str_at(v, path)))
}

fn columns(kind: Kind, wide: bool) -> Vec<Column> {
    let mut c: Vec<Column> = Vec::new();
    match kind {
        Kind::Pod => {
            c.push(("READY", Box::new(pod_ready)));
            if wide {
                c.push(("NODE", Box::new(|v, _| str_at(v, "spec.nodeName"))));
                c.push(("IP", Box::new(pod_ips)));
            }
        }
        Kind::Service => {
            c.push(col("TYPE", "spec.type"));
            c.push((
                "CLUSTER-IP",
                Box::new(|v, _| {
                    let ips = list_at(v, "spec.clusterIPs");
                    if ips.is_empty() {
                        str_at(v, "spec.clusterIP")
                    } else {
                        ips.join(",")
                    }
                }),
            ));
            c.push((
                "EXTERNAL-IP",
                Box::new(|v, _| {
                    let mut ips = list_at(v, "spec.externalIPs");
                    if let Some(Value::Array(ing)) = at(v, "status.loadBalancer.ingress") {
                        ips.extend(ing.iter().filter_map(|i| {
                            i.get("ip").and_then(Value::as_str).map(str::to_string)
                        }));
                    }
                    ips.join(",")
                }),
            ));
            c.push(("PORT(S)", Box::new(|v, _| service_ports(v))));
            if wide {
                c.push(("SELECTOR", Box::new(|v, _| map_at(v, "spec.selector"))));
            }
        }
        Kind::EndpointSlice => {
            c.push(col("ADDRESSTYPE", "addressType"));
            c.push((
                "PORTS",
                Box::new(|v, _| {
                    let Some(Value::Array(ps)) = at(v, "ports") else {
                        return String::new();
                    };
                    ps.iter()
                        .map(|p| p.get("port").map(value_str).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ));
            c.push((
                "ENDPOINTS",
                Box::new(|v, _| {
                    let Some(Value::Array(es)) = at(v, "endpoints") else {
                        return String::new();
                    };
                    es.iter()
                        .flat_map(|e| list_at(e, "addresses"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ));
        }
        Kind::K8sNetworkPolicy => {
            c.push((
                "POD-SELECTOR",
                Box::new(|v, _| {
                    let mut parts = vec![map_at(v, "spec.podSelector.matchLabels")];
                    if let Some(Value::Array(es)) = at(v, "spec.podSelector.matchExpressions") {
                        for e in es {
                            parts.push(
                                format!(
                                    "{} {} {}",
                                    str_at(e, "key"),
                                    str_at(e, "operator"),
                                    list_at(e, "values").join(",")
                                )
                                .trim()
                                .to_string(),
                            );
                        }
                    }
                    parts.retain(|p| !p.is_empty());
                    parts.join(",")
                }),
            ));
        }
        Kind::Tier => c.push(col("ORDER", "spec.order")),
        Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => {
            c.push(col("TIER", "spec.tier"));
            c.push(col("ORDER", "spec.order"));
            c.push(col("SELECTOR", "spec.selector"));
        }
        Kind::HostEndpoint => {
            c.push(col("NODE", "spec.node"));
            c.push(col("INTERFACE", "spec.interfaceName"));
            c.push((
                "EXPECTEDIPS",
                Box::new(|v, _| list_at(v, "spec.expectedIPs").join(",")),
            ));
        }
        Kind::IPPool => {
            c.push(col("CIDR", "spec.cidr"));
            c.push(col("SELECTOR", "spec.nodeSelector"));
            if wide {
                c.push(col("BLOCKSIZE", "spec.blockSize"));
                c.push(col("ENCAPSULATION", "spec.encapsulation"));
                c.push(col("NATOUTGOING", "spec.natOutgoing"));
                c.push(col("DISABLED", "spec.disabled"));
            }
        }
        Kind::Node => {
            c.push(col("IPV4", "spec.bgp.ipv4Address"));
            c.push(col("IPV6", "spec.bgp.ipv6Address"));
            if wide {
                c.push(col("ASN", "spec.bgp.asNumber"));
            }
        }
        Kind::BGPConfiguration => {
            c.push(col("LOGSEVERITY", "spec.logSeverityScreen"));
            c.push(col("MESHENABLED", "spec.nodeToNodeMeshEnabled"));
            c.push(col("ASNUMBER", "spec.asNumber"));
        }
        Kind::BGPPeer => {
            c.push(col("PEERIP", "spec.peerIP"));
            c.push((
                "NODE",
                Box::new(|v, _| {
                    let n = str_at(v, "spec.node");
                    if n.is_empty() {
                        let s = str_at(v, "spec.nodeSelector");
                        if s.is_empty() { "(global)".into() } else { s }
                    } else {
                        n
                    }
                }),
            ));
            c.push(col("ASN", "spec.asNumber"));
        }
        Kind::FelixConfiguration => {
            c.push(col("BPFENABLED", "spec.bpfEnabled"));
            c.push(col("EXTERNALSERVICEMODE", "spec.bpfExternalServiceMode"));
            if wide {
                c.push(col("CTLB", "spec.bpfConnectTimeLoadBalancing"));
                c.push(col("XDP", "spec.xdpEnabled"));
                c.push(col("LOGLEVEL", "spec.bpfLogLevel"));
            }
        }
        Kind::WorkloadEndpoint => {
            c.push(col("NODE", "spec.node"));
            c.push((
                "NETWORKS",
                Box::new(|v, _| list_at(v, "spec.ipNetworks").join(",")),
            ));
            c.push(col("INTERFACE", "spec.interfaceName"));
        }
        Kind::Namespace => {}
    }
    c
}

fn pod_key(v: &Value) -> String {
    format!(
        "{}/{}",
        str_at(v, "metadata.namespace"),
        str_at(v, "metadata.name")
    )
}

fn pod_ready(v: &Value, x: &Extra) -> String {
    match x.endpoints.get(&pod_key(v)) {
        Some(w) if at(w, "spec.ready") == Some(&Value::Bool(true)) => "1/1".into(),
        _ => "0/1".into(),
    }
}

fn pod_ips(v: &Value, x: &Extra) -> String {
    match x.endpoints.get(&pod_key(v)) {
        Some(w) => list_at(w, "spec.ipNetworks")
            .iter()
            .map(|n| n.split('/').next().unwrap_or(n).to_string())
            .collect::<Vec<_>>()
            .join(","),
        None => String::new(),
    }
}

fn service_ports(v: &Value) -> String {
    let Some(Value::Array(ps)) = at(v, "spec.ports") else {
        return String::new();
    };
    ps.iter()
        .map(|p| {
            let port = p.get("port").map(value_str).unwrap_or_default();
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort") {
                Some(np) => format!("{port}:{}/{proto}", value_str(np)),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // Calico orders are floats; print 10.0 as 10.
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15)
                && !n.is_i64()
                && !n.is_u64() =>
        {
            format!("{}", n.as_f64().unwrap_or_default() as i64)
        }
        other => other.to_string(),
    }
}

fn str_at(v: &Value, path: &str) -> String {
    at(v, path).map(value_str).unwrap_or_default()
}

fn list_at(v: &Value, path: &str) -> Vec<String> {
    match at(v, path) {
        Some(Value::Array(a)) => a.iter().map(value_str).collect(),
        _ => Vec::new(),
    }
}

fn map_at(v: &Value, path: &str) -> String {
    match at(v, path) {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", value_str(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}
