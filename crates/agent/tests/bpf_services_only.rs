//! The eBPF driver's services-only writes (`Dataplane::apply_services_changed` when nothing
//! but services changed) against real pinned maps (root, bpffs, a fresh network namespace):
//! added, changed and removed frontends reach `sv_nat_fe` / `sv_nat_be` exactly as a full
//! write would leave them (a resync, which reads the maps back and rewrites any difference,
//! finds nothing to do), and a failed services-only write (the map would overflow) leaves
//! the previous services in the map and the next write recovers through the full path.

use std::net::Ipv4Addr;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use serval_agent::dataplane::Dataplane;
use serval_agent::dataplane::bpf::{BpfDriver, BpfSettings};
use serval_calc::services::FrontendKey;
use serval_calc::{DesiredState, Model, desired_state};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{NatBeKey, NatBeVal, NatFeKey, NatFeVal};
use serval_dp_bpf::object::{MAP_NAT_BE, MAP_NAT_FE};
use serval_model::{Resource, parse_documents};
use serval_sys::testing::{NetNsGuard, require_root};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: default, labels: {role: backend}}
spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {role: other}}
spec: {nodeName: node2, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.2}]}
"#;

fn service(i: u32, role: &str, port: u16) -> Resource {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i + 1);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  \
         clusterIP: {ip}\n  selector: {{role: {role}}}\n  ports: [{{name: p, protocol: TCP, port: {port}, targetPort: 8080}}]\n"
    );
    parse_documents("svc", &yaml).unwrap().remove(0)
}

fn model(services: impl IntoIterator<Item = Resource>) -> Model {
    Model::from_resources(
        parse_documents("base", BASE)
            .unwrap()
            .into_iter()
            .chain(services),
    )
}

/// The frontend keys that differ between two states (what the pipeline passes).
fn changed(old: &DesiredState, new: &DesiredState) -> Vec<FrontendKey> {
    let d = old.services.diff(&new.services);
    d.changed.iter().chain(d.removed.iter()).cloned().collect()
}

fn fe_count(pins: &PinScope) -> usize {
    let d = MapData::from_pin(pins.map_path(MAP_NAT_FE)).expect("pinned sv_nat_fe");
    let m: BpfHashMap<MapData, NatFeKey, NatFeVal> =
        BpfHashMap::try_from(Map::HashMap(d)).expect("a hash map");
    m.keys().count()
}

fn be_count(pins: &PinScope) -> usize {
    let d = MapData::from_pin(pins.map_path(MAP_NAT_BE)).expect("pinned sv_nat_be");
    let m: BpfHashMap<MapData, NatBeKey, NatBeVal> =
        BpfHashMap::try_from(Map::HashMap(d)).expect("a hash map");
    m.keys().count()
}

/// Removes the pins even when an assertion fails.
struct Clean(PinScope);

impl Drop for Clean {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::attach::cleanup(&self.0, None);
    }
}

#[test]
fn services_only_writes_equal_full_writes_and_fail_without_losing_services() {
    if !require_root("agent bpf services-only write test") {
        return;
    }
    let ns = NetNsGuard::new("svso").expect("test namespace");
    ns.run(|| {
        let scope = format!("svconly{}", std::process::id());
        let mut settings = BpfSettings::default();
        settings.sizes.nat_frontend = 24;
        let mut d = BpfDriver::with_scope(&scope, settings).expect("driver");
        let pins = d.pins();
        let _clean = Clean(pins.clone());

        let s0 = desired_state(
            &model((0..20).map(|i| service(i, "backend", 80))),
            Some("node1"),
        );
        d.apply(&s0).expect("first write (full)");
        assert_eq!(d.services_only_writes(), 0);
        assert_eq!((fe_count(&pins), be_count(&pins)), (20, 20));

        // svc-20 added, svc-3 moved to the other backend, svc-4 to another port, svc-5
        // without backends, svc-6 removed.
        let mut services: Vec<Resource> = (0..21)
            .filter(|i| *i != 6)
            .map(|i| match i {
                3 => service(i, "other", 80),
                4 => service(i, "backend", 81),
                5 => service(i, "nobody", 80),
                _ => service(i, "backend", 80),
            })
            .collect();
        let s1 = desired_state(&model(services.clone()), Some("node1"));
        d.apply_services_changed(&s1, changed(&s0, &s1))
            .expect("services-only write");
        assert_eq!(d.services_only_writes(), 1);
        assert_eq!((fe_count(&pins), be_count(&pins)), (20, 19));
        let w = d.resync().expect("resync");
        assert_eq!(
            w.members_changed, 0,
            "the maps read back equal a full write: {w}"
        );

        // More frontends than sv_nat_fe holds: the write fails before touching the map.
        services.extend((21..30).map(|i| service(i, "backend", 80)));
        let s2 = desired_state(&model(services.clone()), Some("node1"));
        d.apply_services_changed(&s2, changed(&s1, &s2))
            .expect_err("sv_nat_fe would overflow");
        assert_eq!(
            (fe_count(&pins), be_count(&pins)),
            (20, 19),
            "previous services kept"
        );

        // The next write reads the maps back and takes the full path.
        services.truncate(22);
        let s3 = desired_state(&model(services), Some("node1"));
        d.apply_services_changed(&s3, changed(&s2, &s3))
            .expect("write after the failure");
        assert_eq!(d.services_only_writes(), 1, "the full path after a failure");
        assert_eq!(fe_count(&pins), 22);
        // And services-only again after it.
        let s4 = desired_state(
            &model((0..21).map(|i| service(i, "backend", 80))),
            Some("node1"),
        );
        d.apply_services_changed(&s4, changed(&s3, &s4))
            .expect("services-only write");
        assert_eq!(d.services_only_writes(), 2);
        assert_eq!((fe_count(&pins), be_count(&pins)), (21, 21));
        let w = d.resync().expect("resync");
        assert_eq!(w.members_changed, 0, "{w}");
        d.cleanup().expect("cleanup");
    })
    .expect("run in the test namespace");
}
