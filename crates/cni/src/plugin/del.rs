//! DEL: remove the pod's interface, host side and routes, the WorkloadEndpoint, and release the
//! addresses. Everything already gone (the netns too) counts as done.

use serval_sys::{NetNs, Netlink};

use super::Ctx;
use crate::endpoint;
use crate::error::{PluginError, Result};
use crate::naming::host_iface_name_for;
use crate::netsetup;

impl Ctx {
    pub(super) async fn del(&self) -> Result<()> {
        let container = self.env.container_id.as_str();
        let client = self.client().await?;

        // Find our endpoint: by the pod named in CNI_ARGS, else by container id.
        let found = match self.pod() {
            Some((ns, pod)) => {
                let key = endpoint::endpoint_key(ns, &self.node, pod, &self.env.ifname);
                endpoint::get(&client, &key).await?.map(|w| (key, w))
            }
            None => endpoint::list(&client)
                .await?
                .into_iter()
                .find(|w| w.spec.container_id == container && w.spec.endpoint == self.env.ifname)
                .map(|w| (serval_model::Resource::WorkloadEndpoint(w.clone()).key(), w)),
        };
        // The endpoint (and the host side named after the pod) belong to this container unless
        // a newer sandbox of the same pod has replaced them; then only our addresses go.
        let ours = found.as_ref().is_none_or(|(_, w)| {
            w.spec.container_id.is_empty() || w.spec.container_id == container
        });

        if ours {
            let host_iface = match (&found, self.pod()) {
                (Some((_, w)), _) => Some(w.spec.interface_name.clone()),
                (None, Some((ns, pod))) => Some(host_iface_name_for(ns, pod, &self.env.ifname)),
                (None, None) => None,
            };
            // The pod side first, in its namespace, when there still is one.
            if let Some(path) = &self.env.netns {
                match NetNs::open_path(path) {
                    Ok(pod_ns) => netsetup::remove_pod_side(&pod_ns, &self.env.ifname).await?,
                    Err(e) => {
                        tracing::info!(netns = %path, error = %e, "the pod's netns is gone; nothing to remove in it")
                    }
                }
            }
            if let Some(host_iface) = host_iface {
                let host = Netlink::current().map_err(|source| PluginError::Kernel {
                    step: "opening netlink",
                    source,
                })?;
                netsetup::remove_host_side(&host, &host_iface).await?;
            }
        } else {
            tracing::info!(
                container,
                "the endpoint belongs to a newer container of this pod; leaving it and its veth"
            );
        }

        let released = Self::ipam(&client)
            .release_by_handle(container)
            .await
            .map_err(|source| PluginError::ipam(container, source))?;
        tracing::info!(?released, handle = container, "released addresses");

        if ours && let Some((key, _)) = &found {
            endpoint::delete(&client, key).await?;
            tracing::info!(endpoint = %key, "deleted the workload endpoint");
        }
        Ok(())
    }
}
