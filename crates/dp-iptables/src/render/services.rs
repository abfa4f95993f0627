//! Services in the kube-proxy style (nat table), their REJECT/DROP rules (filter table), and
//! NAT outgoing. See the module docs of [`crate::render`] for the layout.

use std::net::IpAddr;

use serval_calc::{
    DesiredState,
    services::{Backend, Frontend, FrontendKey, FrontendKind},
};
use serval_model::types::Protocol;

use super::{MARK_MASQ, chains, comment, fixed_set_name, hashed_chain, net_set};
use crate::rules::{Family, FamilyRules, Hook, Table, TableRules};

fn proto(p: Protocol) -> String {
    p.as_str().to_ascii_lowercase()
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn dnat_to(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn frontend_name(key: &FrontendKey, f: &Frontend) -> String {
    let port = f
        .port_name
        .as_deref()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!("{}/{}{port} {key}", f.service.0, f.service.1)
}

fn svc_chain(key: &FrontendKey) -> String {
    hashed_chain("SERVAL-SVC-", &[&key.to_string()])
}

fn sep_chain(key: &FrontendKey, b: &Backend) -> String {
    hashed_chain(
        "SERVAL-SEP-",
        &[&key.to_string(), &b.ip.to_string(), &b.port.to_string()],
    )
}

pub(super) fn render(state: &DesiredState, family: Family, out: &mut FamilyRules) {
    let pools = fixed_set_name("all-pools", family);
    let masq_pools = fixed_set_name("masq-pools", family);
    let nodes = fixed_set_name("nodes", family);
    let nat = &state.nat_outgoing;
    out.ipsets
        .insert(pools.clone(), net_set(&nat.pools, family));
    out.ipsets
        .insert(masq_pools.clone(), net_set(&nat.masquerade_from, family));
    out.ipsets
        .insert(nodes.clone(), net_set(&nat.node_nets, family));

    let node = state.node.as_deref();
    let mut reject: Vec<String> = Vec::new();
    {
        let t = out.table(Table::Nat);
        t.hooks.insert(Hook::new("PREROUTING", chains::SERVICES));
        t.hooks.insert(Hook::new("OUTPUT", chains::SERVICES));
        t.hooks
            .insert(Hook::new("POSTROUTING", chains::POSTROUTING));
        t.chain(chains::SERVICES);
        t.chain(chains::NODEPORTS);
        t.push(
            chains::MARK_MASQ,
            format!("-j MARK --set-xmark {MARK_MASQ:#x}/{MARK_MASQ:#x}"),
        );
        t.push(
            chains::POSTROUTING,
            format!(
                "-m mark --mark {MARK_MASQ:#x}/{MARK_MASQ:#x} -j {}",
                chains::MASQ
            ),
        );
        t.push(chains::POSTROUTING, format!("-j {}", chains::NAT_OUTGOING));
        t.push(
            chains::MASQ,
            format!("-j MARK --set-xmark 0x0/{MARK_MASQ:#x}"),
        );
        t.push(chains::MASQ, "-j MASQUERADE");
        t.push(
            chains::NAT_OUTGOING,
            format!(
                "-m set --match-set {masq_pools} src -m set ! --match-set {pools} dst -m set ! \
                 --match-set {nodes} dst -m addrtype ! --dst-type LOCAL {} -j MASQUERADE",
                comment("nat outgoing")
            ),
        );

        for (key, f) in &state.services.frontends {
            if Family::of(&key.ip) != family {
                continue;
            }
            if f.kind == FrontendKind::NodePort
                && let (Some(here), Some(owner)) = (node, f.node.as_deref())
                && here != owner
            {
                // Another node's address: its packets never arrive here as local.
                continue;
            }
            let match_dst = format!(
                "-d {} -p {} --dport {}",
                host(&key.ip),
                proto(key.protocol),
                key.port
            );
            let c = comment(&frontend_name(key, f));
            if f.backends.is_empty() {
                let with = if key.protocol == Protocol::Tcp {
                    "tcp-reset"
                } else if family == Family::V4 {
                    "icmp-port-unreachable"
                } else {
                    "icmp6-port-unreachable"
                };
                reject.push(format!("{match_dst} {c} -j REJECT --reject-with {with}"));
                continue;
            }
            // Backends for traffic from inside the cluster (pods, this node), and for traffic
            // from outside received here (eTP Local: this node's only).
            let internal = f.internal_backends(node);
            let external = f.external_backends(node);
            let internal: Vec<&Backend> = internal.iter().collect();
            let local: Vec<&Backend> = external.iter().collect();
            let svc = svc_chain(key);
            t.chain(&svc);
            let dispatch = if f.kind == FrontendKind::NodePort {
                chains::NODEPORTS
            } else {
                chains::SERVICES
            };
            t.push(dispatch, format!("{match_dst} {c} -j {svc}"));

            if !f.kind.is_external() {
                // ClusterIP: masquerade sources outside the cluster.
                t.push(
                    &svc,
                    format!(
                        "-m set ! --match-set {pools} src -m addrtype ! --src-type LOCAL -j {}",
                        chains::MARK_MASQ
                    ),
                );
                balance(t, &svc, key, f, &internal);
                if internal.is_empty() {
                    reject.push(format!("{match_dst} {c} -j DROP"));
                }
            } else if !f.external_local {
                t.push(&svc, format!("-j {}", chains::MARK_MASQ));
                balance(t, &svc, key, f, &f.backends.iter().collect::<Vec<_>>());
            } else {
                // eTP Local: cluster sources are short-circuited to the internal backends,
                // outside sources go to local backends only, with their address kept.
                let svi = hashed_chain("SERVAL-SVI-", &[&key.to_string()]);
                t.chain(&svi);
                t.push(&svc, format!("-m set --match-set {pools} src -j {svi}"));
                t.push(&svc, format!("-m addrtype --src-type LOCAL -j {svi}"));
                balance(t, &svi, key, f, &internal);
                balance(t, &svc, key, f, &local);
                if local.is_empty() || internal.is_empty() {
                    reject.push(format!("{match_dst} {c} -j DROP"));
                }
            }
        }
        t.push(
            chains::SERVICES,
            format!("-m addrtype --dst-type LOCAL -j {}", chains::NODEPORTS),
        );
    }
    let filter = out.table(Table::Filter);
    filter.chain(chains::SVC_REJECT);
    for rule in reject {
        filter.push(chains::SVC_REJECT, rule);
    }
}

/// Spreads over `backends` from `chain`: affinity checks first, then `statistic` jumps with
/// probability 1/(n-i) so every backend gets 1/n. No backends: nothing (the packet goes on
/// un-NATed and the filter table drops it).
fn balance(
    t: &mut TableRules,
    chain: &str,
    key: &FrontendKey,
    f: &Frontend,
    backends: &[&Backend],
) {
    let n = backends.len();
    for b in backends {
        let sep = sep_chain(key, b);
        sep_rules(t, &sep, key, f, b);
        if let Some(timeout) = f.affinity_timeout {
            t.push(
                chain,
                format!("-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}"),
            );
        }
    }
    for (i, b) in backends.iter().enumerate() {
        let sep = sep_chain(key, b);
        if i + 1 == n {
            t.push(chain, format!("-j {sep}"));
        } else {
            let p = 1.0 / (n - i) as f64;
            t.push(
                chain,
                format!("-m statistic --mode random --probability {p:.11} -j {sep}"),
            );
        }
    }
}

fn sep_rules(t: &mut TableRules, sep: &str, key: &FrontendKey, f: &Frontend, b: &Backend) {
    if t.chains.contains_key(sep) {
        return;
    }
    let who = b
        .endpoint
        .as_ref()
        .map(|(ns, pod)| format!("{ns}/{pod}"))
        .unwrap_or_else(|| b.ip.to_string());
    t.push(
        sep,
        format!(
            "-s {} {} -j {}",
            host(&b.ip),
            comment("hairpin"),
            chains::MARK_MASQ
        ),
    );
    let recent = f
        .affinity_timeout
        .map(|_| format!(" -m recent --name {sep} --set"))
        .unwrap_or_default();
    t.push(
        sep,
        format!(
            "-p {}{recent} {} -j DNAT --to-destination {}",
            proto(key.protocol),
            comment(&who),
            dnat_to(&b.ip, b.port)
        ),
    );
}
