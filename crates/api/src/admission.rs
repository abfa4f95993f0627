//! What the API server's admission and the scheduler would do before a resource is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serval_model::{Kind, Resource, ResourceKey};

use crate::allocation::Allocator;
use crate::{ApiError, Client, Result};

/// What admission changed in an apply's input: a changed copy of each resource it wrote to
/// (an allocation, a pod's node), by input index. Every other resource is stored as given,
/// so an apply that needs no allocation copies nothing, and the input stays untouched for a
/// raced retry.
pub(crate) type Admitted = BTreeMap<usize, Resource>;

/// Resource `i` as admission left it so far.
fn current<'a>(input: &'a [Resource], admitted: &'a Admitted, i: usize) -> &'a Resource {
    admitted.get(&i).unwrap_or(&input[i])
}

/// Resource `i` to change: its copy in `admitted`, made now when there is none yet.
fn to_change<'a>(input: &[Resource], admitted: &'a mut Admitted, i: usize) -> &'a mut Resource {
    admitted.entry(i).or_insert_with(|| input[i].clone())
}

/// Bind every Pod without `spec.nodeName` to a node, round-robin: the node with the fewest
/// pods (stored ones plus those bound earlier in this apply), ties broken by name. With no
/// Node resources the pod stays unbound (nothing will run it until one exists).
/// A pod already stored keeps the node it was bound to.
pub(crate) async fn bind_pods(
    client: &Client,
    input: &[Resource],
    admitted: &mut Admitted,
    skeys: &[String],
    existing: &BTreeMap<String, (Resource, serval_store::Revision)>,
) -> Result<()> {
    for (i, skey) in skeys.iter().enumerate() {
        if let Resource::Pod(p) = current(input, admitted, i)
            && p.spec.node_name.is_none()
            && let Some((Resource::Pod(old), _)) = existing.get(skey)
            && old.spec.node_name.is_some()
            && let Resource::Pod(p) = to_change(input, admitted, i)
        {
            p.spec.node_name = old.spec.node_name.clone();
        }
    }
    let unbound = |admitted: &Admitted, i: usize| matches!(current(input, admitted, i), Resource::Pod(p) if p.spec.node_name.is_none());
    if !(0..input.len()).any(|i| unbound(admitted, i)) {
        return Ok(());
    }
    let (nodes, _) = client.list(Kind::Node, None).await?;
    if nodes.is_empty() {
        return Ok(());
    }
    let mut load: BTreeMap<String, usize> =
        nodes.iter().map(|n| (n.meta().name.clone(), 0)).collect();
    let (stored, _) = client.list(Kind::Pod, None).await?;
    let applying: BTreeSet<&str> = skeys.iter().map(String::as_str).collect();
    let bound = stored
        .iter()
        .filter(|p| !applying.contains(p.key().store_key().as_str()))
        .chain((0..input.len()).map(|i| current(input, admitted, i)));
    for p in bound {
        if let Resource::Pod(p) = p
            && let Some(c) = p.spec.node_name.as_ref().and_then(|n| load.get_mut(n))
        {
            *c += 1;
        }
    }
    for i in 0..input.len() {
        if unbound(admitted, i)
            && let Resource::Pod(p) = to_change(input, admitted, i)
        {
            let (node, count) = load
                .iter_mut()
                .min_by(|a, b| (*a.1).cmp(&*b.1).then(a.0.cmp(b.0)))
                .expect("nodes is not empty");
            *count += 1;
            p.spec.node_name = Some(node.clone());
        }
    }
    Ok(())
}

/// The service address ranges cluster IPs are allocated from (kind's defaults; the API
/// server's `--service-cluster-ip-range`).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

/// What the API server does for Services: allocate cluster IPs (one per family the service
/// asks for, from [`SERVICE_CIDR_V4`] / [`SERVICE_CIDR_V6`]) and node ports (30000-32767),
/// keep the ones already allocated, and reject a clusterIP change or a node port that another
/// service holds. `skeys` are the resources' store keys, in order.
pub(crate) async fn allocate_services<'c>(
    client: &'c Client,
    input: &[Resource],
    admitted: &mut Admitted,
    skeys: &[String],
    existing: &BTreeMap<String, (Resource, serval_store::Revision)>,
) -> Result<Option<Allocator<'c>>> {
    use serval_model::k8s::service::{IpFamilyPolicy, NODE_PORT_RANGE, ServiceIpFamily};
    use serval_model::types::Port;

    let resources = || (0..input.len()).map(|i| current(input, admitted, i));
    if !resources().any(|r| matches!(r, Resource::Service(_))) {
        return Ok(None);
    }
    // Who holds what comes from the allocation index (crate::allocation), never from a list
    // of every Service. The applied services' own addresses are theirs (immutable); their
    // node ports are decided again below, so the ports they held do not count as taken.
    let mut alloc = Allocator::open(client).await?;
    for skey in skeys {
        if let Some((Resource::Service(old), _)) = existing.get(skey) {
            for ip in old.spec.cluster_addrs() {
                alloc.claim_ip(ip, skey);
            }
        }
    }
    let needs_ports = resources().any(|r| matches!(r, Resource::Service(s) if s.spec.has_node_ports() || s.spec.ports.iter().any(|p| p.node_port.is_some())));
    let mut used_ports: BTreeMap<(u16, String), ResourceKey> = if needs_ports {
        let applying: BTreeSet<&str> = skeys.iter().map(String::as_str).collect();
        alloc.port_holders(&applying).await?
    } else {
        BTreeMap::new()
    };
    // Families the cluster has pools for decide the default family order.
    let (pools, _) = client.list(Kind::IPPool, None).await?;
    let mut cluster_families: Vec<ServiceIpFamily> = Vec::new();
    for p in pools
        .iter()
        .chain(resources().filter(|r| r.kind() == Kind::IPPool))
    {
        if let Resource::IPPool(p) = p {
            let f = if p.spec.cidr.addr().is_ipv4() {
                ServiceIpFamily::IPv4
            } else {
                ServiceIpFamily::IPv6
            };
            if !cluster_families.contains(&f) {
                cluster_families.push(f);
            }
        }
    }
    cluster_families.sort();
    if cluster_families.is_empty() {
        cluster_families.push(ServiceIpFamily::IPv4);
    }

    // First pass: explicit addresses and ports of the applied services claim their values.
    for (r, skey) in resources().zip(skeys) {
        let Resource::Service(svc) = r else { continue };
        let old = match existing.get(skey) {
            Some((Resource::Service(old), _)) => Some(old),
            _ => None,
        };
        let wanted: &[String] = if !svc.spec.cluster_ips.is_empty() {
            &svc.spec.cluster_ips
        } else {
            svc.spec.cluster_ip.as_slice()
        };
        if let Some(old) = old {
            let old_ips = &old.spec.cluster_ips;
            if !wanted.is_empty() && !old_ips.is_empty() && wanted.first() != old_ips.first() {
                return Err(ApiError::Immutable {
                    key: r.key(),
                    field: "spec.clusterIP".into(),
                    reason: format!(
                        "is immutable (allocated {}); delete and recreate the service to change it",
                        old_ips[0]
                    ),
                });
            }
        }
        for ip in wanted.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
            if !alloc.ip_free_for(ip, skey).await? {
                return Err(ApiError::Allocation {
                    key: r.key(),
                    field: "spec.clusterIP".into(),
                    reason: format!("{ip} is already allocated to another service"),
                });
            }
            alloc.claim_ip(ip, skey);
        }
        for p in &svc.spec.ports {
            if let Some(np) = p.node_port {
                let key = r.key();
                let proto = format!("{:?}", p.protocol);
                if let Some(holder) = used_ports.insert((np.0, proto.clone()), key.clone())
                    && holder != key
                {
                    return Err(ApiError::Allocation {
                        key,
                        field: "spec.ports.nodePort".into(),
                        reason: format!("node port {np}/{proto} is already allocated to {holder}"),
                    });
                }
            }
        }
    }

    // An address as text, for comparing (reused).
    let mut ip_text = String::new();
    // Second pass: allocate what is missing. Each Service's values are worked out from it as
    // it is, and it is copied into `admitted` only when they differ from its own.
    for (i, skey) in skeys.iter().enumerate() {
        let Resource::Service(svc) = current(input, admitted, i) else {
            continue;
        };
        let old = match existing.get(skey) {
            Some((Resource::Service(old), _)) => Some(old),
            _ => None,
        };
        // The key only for errors and node ports: most Services need neither.
        let meta = &svc.metadata;
        let key = || ResourceKey {
            kind: Kind::Service,
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        };
        let spec = &svc.spec;
        // The addresses (cluster IPs, families, policy) when they differ from the Service's.
        let mut addrs = None;
        if !spec.is_headless() {
            let mut ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            if ips.is_empty()
                && let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
            {
                ips.push(ip);
            }
            if ips.is_empty()
                && let Some(old) = &old
            {
                ips = old.spec.cluster_addrs();
            }
            // Families wanted, in order.
            let mut families: Vec<ServiceIpFamily> = if !spec.ip_families.is_empty() {
                spec.ip_families.clone()
            } else if !ips.is_empty() {
                ips.iter()
                    .map(|ip| {
                        if ip.is_ipv4() {
                            ServiceIpFamily::IPv4
                        } else {
                            ServiceIpFamily::IPv6
                        }
                    })
                    .collect()
            } else {
                vec![cluster_families[0]]
            };
            if matches!(
                spec.ip_family_policy,
                Some(IpFamilyPolicy::PreferDualStack | IpFamilyPolicy::RequireDualStack)
            ) {
                for f in &cluster_families {
                    if !families.contains(f) {
                        families.push(*f);
                    }
                }
            }
            if families.len() > 1 && spec.ip_family_policy.is_none() && spec.ip_families.len() < 2 {
                families.truncate(ips.len().max(1));
            }
            for f in &families {
                if ips
                    .iter()
                    .any(|ip| ip.is_ipv4() == (*f == ServiceIpFamily::IPv4))
                {
                    continue;
                }
                let (first, last) = service_range(*f);
                let ip = alloc
                    .next_free(*f, first, last, skey)
                    .await?
                    .ok_or_else(|| ApiError::Allocation {
                        key: key(),
                        field: "spec.clusterIP".into(),
                        reason: format!("the {f:?} service range is full"),
                    })?;
                ips.push(ip);
            }
            let family = |ip: &IpAddr| {
                if ip.is_ipv4() {
                    ServiceIpFamily::IPv4
                } else {
                    ServiceIpFamily::IPv6
                }
            };
            let policy = spec.ip_family_policy.or(Some(IpFamilyPolicy::SingleStack));
            // Compared without building the lists: most Services already hold their values.
            let same_ips = spec.cluster_ips.len() == ips.len()
                && spec.cluster_ips.iter().zip(&ips).all(|(s, ip)| {
                    ip_text.clear();
                    write!(ip_text, "{ip}").expect("writing to a String never fails");
                    *s == ip_text
                });
            let unchanged = same_ips
                && spec.cluster_ip.as_ref() == spec.cluster_ips.first()
                && spec.ip_families.len() == ips.len()
                && spec
                    .ip_families
                    .iter()
                    .zip(&ips)
                    .all(|(f, ip)| *f == family(ip))
                && policy == spec.ip_family_policy;
            if !unchanged {
                let cluster_ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                let ip_families: Vec<ServiceIpFamily> = ips.iter().map(family).collect();
                addrs = Some((cluster_ips, ip_families, policy));
            }
        }
        // The node ports allocated, by port index.
        let mut node_ports: Vec<(usize, u16)> = Vec::new();
        if spec.has_node_ports() {
            for k in 0..spec.ports.len() {
                if spec.ports[k].node_port.is_some() {
                    continue;
                }
                let proto = format!("{:?}", spec.ports[k].protocol);
                // Keep the port allocated before for the same port/protocol.
                let kept = old.as_ref().and_then(|o| {
                    o.spec
                        .ports
                        .iter()
                        .find(|op| {
                            op.port == spec.ports[k].port && op.protocol == spec.ports[k].protocol
                        })
                        .and_then(|op| op.node_port)
                });
                let np = match kept {
                    Some(np) if !used_ports.contains_key(&(np.0, proto.clone())) => np.0,
                    _ => NODE_PORT_RANGE
                        .clone()
                        .find(|p| !used_ports.contains_key(&(*p, proto.clone())))
                        .ok_or_else(|| ApiError::Allocation {
                            key: key(),
                            field: "spec.ports.nodePort".into(),
                            reason: "every node port in 30000-32767 is allocated".into(),
                        })?,
                };
                used_ports.insert((np, proto), key());
                node_ports.push((k, np));
            }
        }
        if addrs.is_none() && node_ports.is_empty() {
            continue;
        }
        if let Resource::Service(svc) = to_change(input, admitted, i) {
            let spec = &mut svc.spec;
            if let Some((cluster_ips, ip_families, policy)) = addrs {
                spec.cluster_ip = cluster_ips.first().cloned();
                spec.cluster_ips = cluster_ips;
                spec.ip_families = ip_families;
                spec.ip_family_policy = policy;
            }
            for (k, np) in node_ports {
                spec.ports[k].node_port = Some(Port(np));
            }
        }
    }
    Ok(Some(alloc))
}

/// The addresses of the family's service range automatic allocation hands out, as numbers:
/// the network address and the first host are skipped (kept for the API server's own
/// service, as Kubernetes does), and IPv4's broadcast address.
fn service_range(family: serval_model::k8s::service::ServiceIpFamily) -> (u128, u128) {
    use serval_model::k8s::service::ServiceIpFamily;
    let cidr: ipnet::IpNet = match family {
        ServiceIpFamily::IPv4 => SERVICE_CIDR_V4,
        ServiceIpFamily::IPv6 => SERVICE_CIDR_V6,
    }
    .parse()
    .expect("constant service CIDRs parse");
    let to_u128 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let first = to_u128(cidr.network()) + 2;
    let last = to_u128(cidr.broadcast()) - u128::from(family == ServiceIpFamily::IPv4);
    (first, last)
}
