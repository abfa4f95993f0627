//! STATUS and GC (spec 1.1).
//!
//! STATUS answers whether an ADD could succeed now: the datastore answers and an enabled
//! pool of every wanted family applies to this node.
//!
//! GC removes, on this node, everything of attachments the runtime no longer knows
//! (`cni.dev/valid-attachments`): their endpoints and host-side veths, and the IPAM
//! allocations whose handle (container ID) is not listed.

use std::collections::BTreeSet;

use serval_model::Resource;
use serval_sys::Netlink;

use super::Ctx;
use crate::endpoint;
use crate::error::{PluginError, Result};
use crate::netsetup;
use crate::pools;

impl Ctx {
    pub(super) async fn status(&self) -> Result<()> {
        let client = self.client().await.map_err(|e| PluginError::NotReady {
            reason: e.to_string(),
        })?;
        let all = endpoint::pools(&client)
            .await
            .map_err(|e| PluginError::NotReady {
                reason: e.to_string(),
            })?;
        let labels = endpoint::node_labels(&client, &self.node)
            .await
            .map_err(|e| PluginError::NotReady {
                reason: e.to_string(),
            })?;
        let chosen =
            pools::choose(&self.conf.ipam, &all, &labels).map_err(|e| PluginError::NotReady {
                reason: e.to_string(),
            })?;
        for (wanted, list, family) in [
            (self.conf.ipam.assign_ipv4, &chosen.v4, "IPv4"),
            (self.conf.ipam.assign_ipv6, &chosen.v6, "IPv6"),
        ] {
            if wanted && !list.iter().any(|p| !p.spec.disabled) {
                return Err(PluginError::NotReady {
                    reason: format!(
                        "no enabled {family} IPPool applies to node {}; create one",
                        self.node
                    ),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn gc(&self) -> Result<()> {
        let valid: BTreeSet<&str> = self
            .conf
            .valid_attachments
            .iter()
            .map(|a| a.container_id.as_str())
            .collect();
        let client = self.client().await?;
        let host = Netlink::current().map_err(|source| PluginError::Kernel {
            step: "opening netlink",
            source,
        })?;

        for wep in endpoint::list(&client).await? {
            if wep.spec.node != self.node || valid.contains(wep.spec.container_id.as_str()) {
                continue;
            }
            let key = Resource::WorkloadEndpoint(wep.clone()).key();
            tracing::info!(endpoint = %key, container = %wep.spec.container_id, "GC: removing a stale endpoint");
            netsetup::remove_host_side(&host, &wep.spec.interface_name).await?;
            endpoint::delete(&client, &key).await?;
        }

        let ipam = Self::ipam(&client);
        let ipam_err = |container: &str| {
            let container = container.to_string();
            move |source| PluginError::ipam(&container, source)
        };
        for handle in ipam.handles().await.map_err(ipam_err("(all)"))? {
            let ours = handle.attrs.node == self.node && handle.attrs.container_id.is_some();
            if !ours || valid.contains(handle.handle.as_str()) {
                continue;
            }
            let freed = ipam
                .release_by_handle(&handle.handle)
                .await
                .map_err(ipam_err(&handle.handle))?;
            tracing::info!(handle = %handle.handle, ?freed, "GC: released a stale allocation");
        }
        Ok(())
    }
}
