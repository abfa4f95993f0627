//! ADD: addresses from IPAM, the veth pair and routes, the WorkloadEndpoint; undone on failure.

use serval_ipam::AssignRequest;
use serval_sys::{NetNs, Netlink};

use super::Ctx;
use crate::endpoint::{self, EndpointInfo};
use crate::error::{PluginError, Result};
use crate::naming::{GATEWAY_V4, GATEWAY_V6, host_iface_name_for};
use crate::netsetup::{self, PodLink, host_net};
use crate::pools;
use crate::spec::{CniResult, Interface, IpConfig, Route};

impl Ctx {
    pub(super) async fn add(&self) -> Result<serde_json::Value> {
        let (namespace, pod_name) = self.require_pod()?;
        let container = self.env.container_id.as_str();
        let netns_path = self.env.netns.clone().unwrap_or_default();
        if self.conf.prev_result.is_some() {
            tracing::warn!(
                "ADD got a prevResult: serval should be the first plugin of the list; its result replaces it"
            );
        }
        // The namespace first: nothing is allocated for a container that does not exist.
        let pod_ns = NetNs::open_path(&netns_path).map_err(|source| PluginError::Netns {
            path: netns_path.clone(),
            source,
        })?;

        let client = self.client().await?;
        let pod = endpoint::get_pod(&client, namespace, pod_name).await?;
        if pod.is_none() {
            tracing::warn!(
                namespace,
                pod = pod_name,
                "no Pod resource; the endpoint gets no pod labels or ports"
            );
        }
        let labels = endpoint::node_labels(&client, &self.node).await?;
        let all_pools = endpoint::pools(&client).await?;
        let chosen = pools::choose(&self.conf.ipam, &all_pools, &labels)?;
        let mtu = self.conf.mtu.unwrap_or_else(|| chosen.mtu());

        let ipam = Self::ipam(&client);
        let ipam_err = |source| PluginError::ipam(container, source);
        // A repeated ADD of a live container gets its addresses back from IPAM; on failure
        // those must not be released (they belong to the working attachment).
        let held_before = ipam.handle(container).await.map_err(ipam_err)?.is_some();
        let addrs = ipam
            .auto_assign(AssignRequest {
                handle: container.to_string(),
                node: self.node.clone(),
                attrs: self.attrs(namespace, pod_name),
                v4_pools: chosen.v4_specs(),
                v6_pools: chosen.v6_specs(),
                want_v4: self.conf.ipam.assign_ipv4,
                want_v6: self.conf.ipam.assign_ipv6,
            })
            .await
            .map_err(ipam_err)?;
        tracing::info!(?addrs, handle = container, "assigned addresses");

        let host_iface = host_iface_name_for(namespace, pod_name, &self.env.ifname);
        let link = PodLink {
            host_iface: host_iface.clone(),
            ifname: self.env.ifname.clone(),
            addrs: addrs.clone(),
            mtu,
        };
        let host = Netlink::current().map_err(|source| PluginError::Kernel {
            step: "opening netlink",
            source,
        })?;

        let done = async {
            let wired = netsetup::wire(&host, &pod_ns, &link).await?;
            tracing::info!(host_iface, ifname = %link.ifname, mtu, "wired the pod");
            let wep = endpoint::build(&EndpointInfo {
                namespace,
                pod_name,
                pod: pod.as_ref(),
                node: &self.node,
                container_id: container,
                ifname: &self.env.ifname,
                host_iface: &host_iface,
                mac: wired.pod_mac.to_string(),
                nets: addrs.iter().map(|a| host_net(*a)).collect(),
            });
            let wep_name = wep.metadata.name.clone();
            endpoint::put(&client, wep).await?;
            tracing::info!(namespace, endpoint = %wep_name, "stored the workload endpoint");
            Ok::<_, PluginError>(wired)
        }
        .await;

        let wired = match done {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "ADD failed after allocation; undoing");
                // Removing the host side removes the pod side with it (one veth pair). An
                // interface that was in the pod before (veth creation failed with EEXIST) is
                // not ours and stays.
                if let Err(undo) = netsetup::remove_host_side(&host, &host_iface).await {
                    tracing::warn!(error = %undo, "could not remove the host side");
                }
                if !held_before && let Err(undo) = ipam.release_by_handle(container).await {
                    tracing::warn!(error = %undo, "could not release the addresses; the leak check will find them");
                }
                return Err(e);
            }
        };

        let mut result = CniResult {
            cni_version: self.conf.cni_version.clone(),
            interfaces: vec![
                Interface {
                    name: host_iface,
                    mac: wired.host_mac.to_string(),
                    mtu: None,
                    sandbox: None,
                },
                Interface {
                    name: self.env.ifname.clone(),
                    mac: wired.pod_mac.to_string(),
                    mtu: None,
                    sandbox: Some(netns_path),
                },
            ],
            ips: Vec::new(),
            routes: Vec::new(),
            dns: self.conf.dns.clone(),
        };
        for addr in &addrs {
            let gw = if addr.is_ipv4() {
                GATEWAY_V4.into()
            } else {
                GATEWAY_V6.into()
            };
            result.ips.push(IpConfig {
                address: host_net(*addr),
                gateway: Some(gw),
                interface: Some(1),
            });
        }
        if addrs.iter().any(|a| a.is_ipv4()) {
            result.routes.push(Route {
                dst: "0.0.0.0/0".parse().expect("literal"),
                gw: Some(GATEWAY_V4.into()),
            });
        }
        if addrs.iter().any(|a| a.is_ipv6()) {
            result.routes.push(Route {
                dst: "::/0".parse().expect("literal"),
                gw: Some(GATEWAY_V6.into()),
            });
        }
        if let Some(mtu_iface) = result.interfaces.get_mut(1)
            && self.conf.version >= crate::spec::Version::V1_1_0
        {
            // `mtu` on interfaces is a 1.1.0 field.
            mtu_iface.mtu = Some(mtu);
        }
        Ok(result.to_json())
    }
}
