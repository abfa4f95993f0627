//! What the API server's admission and the scheduler would do before a resource is stored.

use std::collections::BTreeMap;

use serval_model::{Kind, Resource};

use crate::{Client, Result};

/// Bind every Pod without `spec.nodeName` to a node, round-robin: the node with the fewest
/// pods (stored ones plus those bound earlier in this apply), ties broken by name. With no
/// Node resources the pod stays unbound (nothing will run it until one exists).
/// A pod already stored keeps the node it was bound to.
pub(crate) async fn bind_pods(
    client: &Client,
    resources: &mut [Resource],
    existing: &BTreeMap<String, (Resource, serval_store::Revision)>,
) -> Result<()> {
    for r in resources.iter_mut() {
        let skey = r.key().store_key();
        if let Resource::Pod(p) = r {
            if p.spec.node_name.is_none() {
                if let Some((Resource::Pod(old), _)) = existing.get(&skey) {
                    p.spec.node_name = old.spec.node_name.clone();
                }
            }
        }
    }
    if !resources.iter().any(|r| matches!(r, Resource::Pod(p) if p.spec.node_name.is_none())) {
        return Ok(());
    }
    let (nodes, _) = client.list(Kind::Node, None).await?;
    if nodes.is_empty() {
        return Ok(());
    }
    let mut load: BTreeMap<String, usize> =
        nodes.iter().map(|n| (n.meta().name.clone(), 0)).collect();
    let (pods, _) = client.list(Kind::Pod, None).await?;
    for p in &pods {
        if let Resource::Pod(p) = p {
            if let Some(n) = &p.spec.node_name {
                if let Some(c) = load.get_mut(n) {
                    *c += 1;
                }
            }
        }
    }
    for r in resources.iter_mut() {
        if let Resource::Pod(p) = r {
            if let Some(n) = &p.spec.node_name {
                if let Some(c) = load.get_mut(n) {
                    *c += 1;
                }
            }
        }
    }
    for r in resources.iter_mut() {
        if let Resource::Pod(p) = r {
            if p.spec.node_name.is_none() {
                let (node, count) = load
                    .iter_mut()
                    .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
                    .expect("nodes is not empty");
                *count += 1;
                p.spec.node_name = Some(node.clone());
            }
        }
    }
    Ok(())
}
