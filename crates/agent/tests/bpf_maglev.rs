//! The eBPF driver's Maglev tables in real pinned maps (root, bpffs): two drivers standing for
//! two nodes (own pin scopes, removed on drop) write the same table for a service annotated
//! `lb.projectcalico.org/external-traffic-strategy: maglev`; removing one of N backends
//! rewrites about 1/N of its entries; an entry changed behind the driver's back is repaired
//! by a resync; deleting the service removes its table.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{Map, MapData};
use serval_agent::dataplane::Dataplane;
use serval_agent::dataplane::bpf::{BpfDriver, BpfSettings};
use serval_calc::maglev::DEFAULT_TABLE_SIZE;
use serval_calc::{Model, desired_state};
use serval_dp_bpf::abi::{MaglevKey, MaglevVal, NatFeKey, NatFeVal, SV_MAGLEV_META};
use serval_dp_bpf::object::{MAP_MAGLEV, MAP_NAT_FE};
use serval_model::{Kind, ResourceKey, parse_documents};

const BACKENDS: usize = 5;

fn yaml(backends: usize) -> String {
    let mut y = String::from(
        r#"
apiVersion: v1
kind: Service
metadata:
  namespace: x
  name: web
  annotations: {lb.projectcalico.org/external-traffic-strategy: maglev}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [198.51.100.10]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: x
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
"#,
    );
    for i in 0..backends {
        y.push_str(&format!(
            "- {{addresses: [10.244.{}.5], conditions: {{ready: true}}, nodeName: node{}}}\n",
            i + 1,
            i % 2 + 1
        ));
    }
    y
}

/// A driver with its own pin scope, cleaned when dropped (also on panic).
struct Node(BpfDriver);

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.0.cleanup() {
            eprintln!("cleanup failed: {e}");
        }
    }
}

fn node(tag: &str) -> Node {
    let scope = format!("mgl{}{tag}", std::process::id());
    Node(BpfDriver::with_scope(&scope, BpfSettings::default()).expect("driver opens"))
}

fn pinned<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(n: &Node, map: &str) -> HashMap<K, V> {
    let d = MapData::from_pin(n.0.pins().map_path(map)).expect("pinned map");
    let m: aya::maps::HashMap<MapData, K, V> =
        aya::maps::HashMap::try_from(Map::HashMap(d)).expect("a hash map");
    m.iter().map(|kv| kv.expect("entry")).collect()
}

/// The external IP frontend's table on `n`: index → (backend address, port).
fn table(n: &Node) -> BTreeMap<u32, ([u8; 16], u16)> {
    let fes: HashMap<NatFeKey, NatFeVal> = pinned(n, MAP_NAT_FE);
    let fk = NatFeKey::new("198.51.100.10".parse().unwrap(), 80, 6);
    let Some(fe) = fes.get(&fk) else {
        return BTreeMap::new();
    };
    let entries: HashMap<MaglevKey, MaglevVal> = pinned(n, MAP_MAGLEV);
    entries
        .iter()
        .filter(|(k, _)| k.svc_id == fe.svc_id && k.index != SV_MAGLEV_META)
        .map(|(k, v)| (k.index, (v.addr.0, u16::from_be(v.port))))
        .collect()
}

fn apply(n: &mut Node, model: &Model, name: &str) {
    n.0.apply(&desired_state(model, Some(name)))
        .unwrap_or_else(|e| panic!("apply on {name}: {e}"));
}

#[test]
fn two_nodes_write_the_same_table_and_a_removed_backend_moves_one_nth() {
    if !serval_sys::testing::require_root("agent bpf maglev test") {
        return;
    }
    let (mut n1, mut n2) = (node("a"), node("b"));
    let mut model = Model::from_resources(parse_documents("t", &yaml(BACKENDS)).unwrap());
    apply(&mut n1, &model, "node1");
    apply(&mut n2, &model, "node2");
    let (t1, t2) = (table(&n1), table(&n2));
    assert_eq!(
        t1.len(),
        DEFAULT_TABLE_SIZE as usize,
        "a full table on node1"
    );
    assert_eq!(t1, t2, "node1 and node2 wrote different tables");

    // One backend fewer: about 1/N of the entries change, on both nodes alike.
    for r in parse_documents("t", &yaml(BACKENDS - 1)).unwrap() {
        model.apply(r);
    }
    apply(&mut n1, &model, "node1");
    apply(&mut n2, &model, "node2");
    let (u1, u2) = (table(&n1), table(&n2));
    assert_eq!(u1, u2);
    let moved = t1.iter().filter(|(i, b)| u1.get(i) != Some(b)).count();
    let f = moved as f64 / f64::from(DEFAULT_TABLE_SIZE);
    let bound = 1.0 / BACKENDS as f64;
    println!(
        "removing 1 of {BACKENDS} backends rewrote {moved} of {DEFAULT_TABLE_SIZE} entries ({f:.4}; 1/N = {bound:.4})"
    );
    assert!(
        f >= bound * 0.9 && f <= bound + 0.02,
        "moved {f:.4}, 1/N = {bound:.4}"
    );

    // An entry changed behind the driver's back is put back by a resync.
    {
        let fes: HashMap<NatFeKey, NatFeVal> = pinned(&n1, MAP_NAT_FE);
        let svc_id = fes[&NatFeKey::new("198.51.100.10".parse().unwrap(), 80, 6)].svc_id;
        let d = MapData::from_pin(n1.0.pins().map_path(MAP_MAGLEV)).unwrap();
        let mut m: aya::maps::HashMap<MapData, MaglevKey, MaglevVal> =
            aya::maps::HashMap::try_from(Map::HashMap(d)).unwrap();
        let bogus = MaglevVal::new("10.9.9.9".parse().unwrap(), 1, DEFAULT_TABLE_SIZE);
        m.insert(MaglevKey { svc_id, index: 0 }, bogus, 0).unwrap();
    }
    assert_ne!(table(&n1), u1);
    n1.0.resync().expect("resync");
    assert_eq!(table(&n1), u1, "resync repaired the table");

    // The service goes away: so does its table.
    model.remove(&ResourceKey::new(Kind::Service, Some("x"), "web"));
    apply(&mut n1, &model, "node1");
    let left: HashMap<MaglevKey, MaglevVal> = pinned(&n1, MAP_MAGLEV);
    assert!(left.is_empty(), "{} sv_maglev entries left", left.len());
}
