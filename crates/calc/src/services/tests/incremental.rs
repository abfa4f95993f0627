//! Incremental updates: one change touches one service.

use super::*;

#[test]
fn relabelling_one_pod_changes_only_its_service() {
    let other = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: other, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  selector: {tier: front}
  ports: [{port: 80, nodePort: 30100}]
"#,
    );
    let tier = |name: &'static str, node: &'static str, a: &'static [&'static str]| {
        pod(P {
            name,
            node,
            ips: a,
            labels: &[("app", "web"), ("tier", "front")],
            ..Default::default()
        })
    };
    let pods = vec![
        tier("a", "n1", &["10.244.1.1"]),
        tier("b", "n2", &["10.244.2.1"]),
    ];
    let mut m = model([yaml(NODES), yaml(WEB), other, pods]);
    let before = services(&m, None, &[]);

    // Pod a leaves `app: web` but stays `tier: front`.
    let old_labels = m.endpoints()[0].labels.clone();
    let relabelled = pod(P {
        name: "a",
        node: "n1",
        ips: &["10.244.1.1"],
        labels: &[("app", "api"), ("tier", "front")],
        ..Default::default()
    });
    let new_labels = match &relabelled {
        Resource::Pod(p) => p.metadata.labels.clone(),
        _ => unreachable!(),
    };
    m.apply(relabelled);
    let after = services(&m, None, &[]);

    let delta = before.diff(&after);
    assert!(delta.removed.is_empty());
    assert_eq!(
        delta.changed.iter().cloned().collect::<Vec<_>>(),
        [tcp("10.96.0.10", 80)]
    );
    assert_eq!(
        backend_ips(&after.frontends[&tcp("10.96.0.10", 80)]),
        ["10.244.2.1:8080@n2"]
    );

    // The incremental path finds the same: the services the old and new labels select, each
    // recomputed alone and swapped in.
    let mut affected = services_selecting(&m, "x", &old_labels);
    affected.extend(services_selecting(&m, "x", &new_labels));
    affected.sort();
    affected.dedup();
    assert_eq!(
        affected,
        [
            ("x".to_string(), "other".to_string()),
            ("x".to_string(), "web".to_string())
        ]
    );
    let mut incremental = before.clone();
    let mut total = FrontendDelta::default();
    for (ns, name) in &affected {
        let d = incremental.replace_service(ns, name, frontends_of(&m, ns, name, None, &[]));
        total.changed.extend(d.changed);
        total.removed.extend(d.removed);
    }
    assert_eq!(incremental, after);
    assert_eq!(total, delta);
}

#[test]
fn replace_service_removes_restores_and_resolves_conflicts_by_name() {
    let m = model([yaml(NODES), yaml(WEB), web_pods()]);
    let mut st = services(&m, None, &[]);
    // Removing the service removes its frontends.
    let d = st.replace_service("x", "web", BTreeMap::new());
    assert_eq!(d.removed.len(), 1);
    assert!(st.frontends.is_empty());
    // Putting them back restores them.
    let d = st.replace_service("x", "web", frontends_of(&m, "x", "web", None, &[]));
    assert_eq!(d.changed.len(), 1);
    assert_eq!(st, services(&m, None, &[]));
    // Another service claiming the same frontend takes it over only when it sorts first, as
    // in a full computation.
    let claim = |name: &str| {
        let mut theirs = frontends_of(&m, "x", "web", None, &[]);
        for f in theirs.values_mut() {
            f.service.1 = name.to_string();
        }
        theirs
    };
    let d = st.replace_service("x", "zzz", claim("zzz"));
    assert!(d.is_empty());
    assert_eq!(st, services(&m, None, &[]));
    let d = st.replace_service("x", "aaa", claim("aaa"));
    assert_eq!(d.changed.len(), 1);
    assert!(d.removed.is_empty());
    assert_eq!(st.frontends[&tcp("10.96.0.10", 80)].service.1, "aaa");
    assert_eq!(st.frontends_of_service("x", "web").count(), 0);
}

#[test]
fn incremental_updates_match_a_full_recompute() {
    enum Step {
        Apply(Box<Resource>),
        Remove(ResourceKey),
    }
    let k = |kind, ns: Option<&str>, name: &str| ResourceKey::new(kind, ns, name);
    let svc_web_9090 = WEB.replace("targetPort: 8080", "targetPort: 9090");
    let steps: Vec<(&str, Step, Vec<&str>)> = vec![
        (
            "relabel pod a out of web",
            Step::Apply(Box::new(pod(P {
                name: "a",
                node: "n1",
                ips: &["10.244.1.1", "fd00::1:1"],
                labels: &[("app", "api")],
                ..Default::default()
            }))),
            vec!["web"],
        ),
        (
            // b backs web by selector and manual through its slice (by address).
            "remove pod b",
            Step::Remove(k(Kind::Pod, Some("x"), "b")),
            vec!["manual", "web"],
        ),
        (
            "a local pod on n3",
            Step::Apply(Box::new(pod(P {
                name: "z",
                node: "n3",
                ips: &["10.244.3.30"],
                labels: &[("app", "local")],
                ..Default::default()
            }))),
            vec!["local"],
        ),
        (
            "change web's targetPort",
            Step::Apply(Box::new(yaml(&svc_web_9090).remove(0))),
            vec!["web"],
        ),
        (
            "delete manual's slice",
            Step::Remove(k(Kind::EndpointSlice, Some("x"), "manual-v4")),
            vec!["manual"],
        ),
        (
            "a fourth node",
            Step::Apply(Box::new(
                yaml(
                    r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n4}
spec: {bgp: {ipv4Address: 192.168.0.4/24}}
"#,
                )
                .remove(0),
            )),
            vec!["local"],
        ),
        (
            "a pod-less ready endpoint joins web",
            Step::Apply(Box::new(serde_yaml_ng::from_str(WEP_READY).unwrap())),
            vec!["web"],
        ),
        (
            "delete service local",
            Step::Remove(k(Kind::Service, Some("x"), "local")),
            vec!["local"],
        ),
        (
            "a namespace label changes nothing",
            Step::Apply(Box::new(
                yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {a: b}}")
                    .remove(0),
            )),
            vec![],
        ),
    ];

    let mut m = model([
        yaml(NODES),
        yaml(WEB),
        yaml(LOCAL),
        yaml(SLICED),
        web_pods(),
        local_pods(),
    ]);
    let mut st = services(&m, None, &[]);
    assert_eq!(st.frontends_of_service("x", "manual").count(), 1);
    for (what, step, want) in steps {
        let (old, new) = match step {
            Step::Apply(r) => {
                let old = current(&m, &r.key());
                m.apply((*r).clone());
                (old, Some(*r))
            }
            Step::Remove(key) => {
                let old = current(&m, &key);
                assert!(old.is_some(), "{what}: nothing to remove");
                m.remove(&key);
                (old, None)
            }
        };
        let affected = affected_services(&m, old.as_ref(), new.as_ref());
        let names: Vec<&str> = affected.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, want, "{what}");
        let full = services(&m, None, &[]);
        let expected = st.diff(&full);
        let mut delta = FrontendDelta::default();
        for (ns, name) in &affected {
            let d = st.replace_service(ns, name, frontends_of(&m, ns, name, None, &[]));
            delta.changed.extend(d.changed);
            delta.removed.extend(d.removed);
        }
        assert_eq!(st, full, "{what}");
        assert_eq!(delta, expected, "{what}");
        if !want.is_empty() {
            assert!(!delta.is_empty(), "{what}: expected a change");
        }
    }
}
