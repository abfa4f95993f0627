//! [`ServiceTracker`]: after any sequence of changes, updating only the affected services
//! gives exactly the state a full [`services`] computation gives.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// One change to the cluster. Small pools of names, addresses and ports so that services
/// collide on frontends (the contested-key paths) and pods move in and out of selectors.
#[derive(Debug, Clone)]
enum Op {
    Service {
        ns: usize,
        name: usize,
        ip: usize,
        external: Option<usize>,
        node_port: Option<usize>,
        app: usize,
        target: u16,
    },
    RemoveService {
        ns: usize,
        name: usize,
    },
    Pod {
        name: usize,
        app: usize,
        node: usize,
        ready: bool,
    },
    RemovePod {
        name: usize,
    },
    Node {
        node: usize,
        addr: usize,
    },
    RemoveNode {
        node: usize,
    },
}

const NS: [&str; 2] = ["x", "y"];
const APPS: [&str; 2] = ["web", "api"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..5usize, 0..3usize, proptest::option::of(0..2usize),
              proptest::option::of(0..2usize), 0..3usize, prop_oneof![Just(8080u16), Just(9090u16)])
            .prop_map(|(ns, name, ip, external, node_port, app, target)| Op::Service {
                ns, name, ip, external, node_port, app, target
            }),
        2 => (0..2usize, 0..5usize).prop_map(|(ns, name)| Op::RemoveService { ns, name }),
        3 => (0..4usize, 0..2usize, 0..2usize, any::<bool>())
            .prop_map(|(name, app, node, ready)| Op::Pod { name, app, node, ready }),
        1 => (0..4usize).prop_map(|name| Op::RemovePod { name }),
        1 => (0..3usize, 0..3usize).prop_map(|(node, addr)| Op::Node { node, addr }),
        1 => (0..3usize).prop_map(|node| Op::RemoveNode { node }),
    ]
}

/// The change as (key, new resource or None for a removal).
fn resource(op: &Op) -> (ResourceKey, Option<Resource>) {
    match *op {
        Op::Service {
            ns,
            name,
            ip,
            external,
            node_port,
            app,
            target,
        } => {
            let ns = NS[ns];
            let typ = if node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            };
            let np = node_port
                .map(|p| format!(", nodePort: {}", 30080 + p))
                .unwrap_or_default();
            let ext = external
                .map(|e| format!("  externalIPs: [203.0.113.{e}]\n"))
                .unwrap_or_default();
            // app 2: no selector (no backends).
            let sel = APPS
                .get(app)
                .map(|a| format!("  selector: {{app: {a}}}\n"))
                .unwrap_or_default();
            let text = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{name}, namespace: {ns}}}\nspec:\n  \
                 type: {typ}\n  clusterIP: 10.96.0.{}\n{sel}{ext}  ports: [{{port: 80, targetPort: {target}{np}}}]\n",
                ip + 1
            );
            let r = yaml(&text).remove(0);
            (r.key(), Some(r))
        }
        Op::RemoveService { ns, name } => (
            ResourceKey::new(Kind::Service, Some(NS[ns]), &format!("s{name}")),
            None,
        ),
        Op::Pod {
            name,
            app,
            node,
            ready,
        } => {
            let ips = [format!("10.244.{node}.{}", name + 1)];
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            let node = format!("n{node}");
            let pod_name = format!("p{name}");
            let r = pod(P {
                ns: NS[name % 2],
                name: &pod_name,
                node: &node,
                ips: &ips,
                labels: &[("app", APPS[app])],
                ready,
                ..Default::default()
            });
            (r.key(), Some(r))
        }
        Op::RemovePod { name } => (
            ResourceKey::new(Kind::Pod, Some(NS[name % 2]), &format!("p{name}")),
            None,
        ),
        Op::Node { node, addr } => {
            let r = yaml(&format!(
                "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: n{node}}}\n\
                 spec: {{bgp: {{ipv4Address: 192.168.0.{}/24}}}}\n",
                addr + 1
            ))
            .remove(0);
            (r.key(), Some(r))
        }
        Op::RemoveNode { node } => (
            ResourceKey::new(Kind::Node, None, &format!("n{node}")),
            None,
        ),
    }
}

fn current(m: &Model, key: &ResourceKey) -> Option<Resource> {
    let nn = (key.namespace.clone().unwrap_or_default(), key.name.clone());
    match key.kind {
        Kind::Service => m.service(&nn.0, &nn.1).map(Resource::Service),
        Kind::Pod => m.pods.get(&nn).cloned().map(Resource::Pod),
        Kind::Node => m.nodes.get(&key.name).cloned().map(Resource::Node),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Batches of random changes: after each batch the tracked state equals a full
    /// computation, and the returned delta turns the previous state into it.
    #[test]
    fn tracked_state_equals_a_full_recompute(
        batches in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 1..12)
    ) {
        let node_addrs: Vec<IpAddr> = vec![ip("192.168.0.9")];
        let this = Some("n0");
        let mut m = Model::default();
        let (mut tracker, mut state) = ServiceTracker::build(&m, this, &node_addrs);
        for batch in batches {
            let before = state.clone();
            let mut affected = BTreeSet::new();
            for op in &batch {
                let (key, new) = resource(op);
                let old = current(&m, &key);
                match &new {
                    Some(r) => { m.apply(r.clone()); }
                    None => { m.remove(&key); }
                }
                affected.extend(affected_services(&m, old.as_ref(), new.as_ref()));
            }
            let delta = tracker.update(&mut state, &m, this, &node_addrs, &affected);
            let full = services(&m, this, &node_addrs);
            prop_assert_eq!(&state, &full, "after {:?}", batch);
            let mut replayed = before;
            for k in &delta.removed {
                replayed.frontends.remove(k);
            }
            // Every key whose frontend changed is named: taking the new values of only those
            // turns the old state into the new one.
            for k in &delta.changed {
                replayed.frontends.insert(k.clone(), state.frontends[k].clone());
            }
            prop_assert_eq!(&replayed, &full);
            // And a tracker built from scratch agrees.
            let (_, built) = ServiceTracker::build(&m, this, &node_addrs);
            prop_assert_eq!(&built, &full);
        }
    }
}

#[test]
fn a_contested_frontend_passes_to_the_next_claimant_when_its_holder_goes() {
    let mut m = model([yaml(NODES), yaml(WEB), web_pods()]);
    let other = WEB.replace("name: web", "name: zzz");
    m.apply(yaml(&other).remove(0));
    let (mut tracker, mut state) = ServiceTracker::build(&m, None, &[]);
    assert_eq!(state, services(&m, None, &[]));
    assert_eq!(state.frontends[&tcp("10.96.0.10", 80)].service.1, "web");
    m.remove(&ResourceKey::new(Kind::Service, Some("x"), "web"));
    let changed = BTreeSet::from([("x".to_string(), "web".to_string())]);
    let delta = tracker.update(&mut state, &m, None, &[], &changed);
    assert_eq!(state.frontends[&tcp("10.96.0.10", 80)].service.1, "zzz");
    assert_eq!(delta.changed.len(), 1);
    assert!(delta.removed.is_empty());
    assert_eq!(state, services(&m, None, &[]));
    assert_eq!(tracker.len(), 1);
}

/// Batches small and large against a model of many services (a large batch walks the model
/// alongside the names, a small one searches it): adds, changes and deletes interleaved by
/// name, names of services that never existed included; the state equals a full computation.
#[test]
fn small_and_large_batches_of_many_services() {
    let svc = |i: usize, port: u16| {
        yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i:03}, namespace: x}}\n\
             spec: {{clusterIP: 10.96.1.{i}, selector: {{app: web}}, ports: [{{port: {port}}}]}}\n"
        ))
        .remove(0)
    };
    let mut m = model([yaml(NODES), web_pods()]);
    for i in (0..200).step_by(2) {
        m.apply(svc(i, 80));
    }
    let (mut tracker, mut state) = ServiceTracker::build(&m, None, &[]);
    assert_eq!(state, services(&m, None, &[]));
    for (round, size) in [1usize, 3, 40, 7, 150, 2, 90].into_iter().enumerate() {
        let mut changed = BTreeSet::new();
        for j in 0..size {
            let i = (j * 37 + round * 11) % 250;
            let key = ResourceKey::new(Kind::Service, Some("x"), &format!("s{i:03}"));
            match (i + round) % 3 {
                0 if i < 200 => {
                    m.remove(&key);
                }
                1 if i < 200 => {
                    m.apply(svc(i, 81 + round as u16));
                }
                // Names beyond 200 are never created: recomputed, they change nothing.
                _ if i >= 200 => {}
                _ => {
                    m.apply(svc(i, 80));
                }
            }
            changed.insert(("x".to_string(), format!("s{i:03}")));
        }
        tracker.update(&mut state, &m, None, &[], &changed);
        assert_eq!(
            state,
            services(&m, None, &[]),
            "round {round}, {size} names"
        );
    }
}
