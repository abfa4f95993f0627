//! The WorkloadEndpoint record of a pod interface, and the datastore reads the plugin needs
//! (pod, node, pools), all through serval-api's [`Client`].

use std::collections::BTreeMap;

use ipnet::IpNet;
use serval_api::Client;
use serval_model::calico::IPPool;
use serval_model::k8s::Pod;
use serval_model::meta::ObjectMeta;
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Kind, Resource, ResourceKey};

use crate::error::{PluginError, Result};
use crate::naming::workload_endpoint_name;

/// Label carrying the pod's namespace on its endpoint (Calico's).
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label carrying the orchestrator on its endpoint (Calico's).
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// Orchestrator value for pods wired through CNI_ARGS' K8S_ keys.
pub const ORCHESTRATOR_K8S: &str = "k8s";

fn ds_err(
    op: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(serval_api::ApiError) -> PluginError {
    let what = what.into();
    move |source| PluginError::datastore(op, what, source)
}

/// The key of the endpoint of `pod`'s interface `ifname` on `node`.
pub fn endpoint_key(namespace: &str, node: &str, pod: &str, ifname: &str) -> ResourceKey {
    ResourceKey::new(
        Kind::WorkloadEndpoint,
        Some(namespace),
        &workload_endpoint_name(node, pod, ifname),
    )
}

/// The Pod resource, if the datastore has it.
pub async fn get_pod(client: &Client, namespace: &str, name: &str) -> Result<Option<Pod>> {
    let key = ResourceKey::new(Kind::Pod, Some(namespace), name);
    match client
        .get(&key)
        .await
        .map_err(ds_err("reading", key.to_string()))?
    {
        Some(Resource::Pod(p)) => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// The node's labels (empty when the Node resource does not exist).
pub async fn node_labels(client: &Client, node: &str) -> Result<BTreeMap<String, String>> {
    let key = ResourceKey::new(Kind::Node, None, node);
    match client
        .get(&key)
        .await
        .map_err(ds_err("reading", key.to_string()))?
    {
        Some(Resource::Node(n)) => Ok(n.metadata.labels),
        _ => {
            tracing::warn!(node, "no Node resource; pool nodeSelectors see no labels");
            Ok(BTreeMap::new())
        }
    }
}

/// Every IPPool.
pub async fn pools(client: &Client) -> Result<Vec<IPPool>> {
    let (items, _) = client
        .list(Kind::IPPool, None)
        .await
        .map_err(ds_err("listing", "IPPools"))?;
    Ok(items
        .into_iter()
        .filter_map(|r| match r {
            Resource::IPPool(p) => Some(p),
            _ => None,
        })
        .collect())
}

/// What ADD learned about one pod interface.
#[derive(Debug, Clone)]
pub struct EndpointInfo<'a> {
    pub namespace: &'a str,
    pub pod_name: &'a str,
    pub pod: Option<&'a Pod>,
    pub node: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub host_iface: &'a str,
    pub mac: String,
    pub nets: Vec<IpNet>,
}

/// Builds the endpoint: labels and named ports from the Pod (when the datastore has it), plus
/// the namespace and orchestrator labels.
pub fn build(info: &EndpointInfo<'_>) -> WorkloadEndpoint {
    let placeholder;
    let pod = match info.pod {
        Some(p) => p,
        None => {
            placeholder = Pod {
                metadata: ObjectMeta::namespaced(info.namespace, info.pod_name),
                ..Pod::default()
            };
            &placeholder
        }
    };
    let mut wep = WorkloadEndpoint::for_pod(
        pod,
        info.node,
        info.container_id,
        info.host_iface,
        info.nets.clone(),
    );
    wep.metadata.name = workload_endpoint_name(info.node, info.pod_name, info.ifname);
    wep.metadata.namespace = Some(info.namespace.to_string());
    wep.metadata
        .labels
        .insert(LABEL_NAMESPACE.into(), info.namespace.to_string());
    wep.metadata
        .labels
        .insert(LABEL_ORCHESTRATOR.into(), ORCHESTRATOR_K8S.into());
    wep.spec.endpoint = info.ifname.to_string();
    wep.spec.mac = Some(info.mac.clone());
    wep
}

/// Stores the endpoint (unconditionally: ADD owns it).
pub async fn put(client: &Client, wep: WorkloadEndpoint) -> Result<()> {
    let key = Resource::WorkloadEndpoint(wep.clone()).key();
    client
        .put(Resource::WorkloadEndpoint(wep), None)
        .await
        .map_err(ds_err("writing", key.to_string()))?;
    Ok(())
}

/// The endpoint under `key`, if any.
pub async fn get(client: &Client, key: &ResourceKey) -> Result<Option<WorkloadEndpoint>> {
    match client
        .get(key)
        .await
        .map_err(ds_err("reading", key.to_string()))?
    {
        Some(Resource::WorkloadEndpoint(w)) => Ok(Some(w)),
        _ => Ok(None),
    }
}

/// Every endpoint (all namespaces).
pub async fn list(client: &Client) -> Result<Vec<WorkloadEndpoint>> {
    let (items, _) = client
        .list(Kind::WorkloadEndpoint, None)
        .await
        .map_err(ds_err("listing", "WorkloadEndpoints"))?;
    Ok(items
        .into_iter()
        .filter_map(|r| match r {
            Resource::WorkloadEndpoint(w) => Some(w),
            _ => None,
        })
        .collect())
}

/// Deletes the endpoint; gone already is fine. Retries when another writer (the agent
/// marking it ready) changed it between the read and the delete.
pub async fn delete(client: &Client, key: &ResourceKey) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.delete(std::slice::from_ref(key), true).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 && matches!(e, serval_api::ApiError::Store(_)) => {
                tracing::debug!(%key, error = %e, attempt, "endpoint delete raced a writer; retrying");
            }
            Err(e) => return Err(ds_err("deleting", key.to_string())(e)),
        }
    }
}
