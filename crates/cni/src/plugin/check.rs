//! CHECK: the container's network still is what ADD reported (prevResult): interface,
//! addresses, routes, host side and host routes, the IPAM allocation and the endpoint.

use std::net::IpAddr;

use serval_sys::{NetNs, Netlink};

use super::Ctx;
use crate::endpoint;
use crate::error::{PluginError, Result};
use crate::naming::host_iface_name_for;
use crate::netsetup::{self, PodLink, host_net};

impl Ctx {
    pub(super) async fn check(&self) -> Result<()> {
        let (namespace, pod_name) = self.require_pod()?;
        let container = self.env.container_id.as_str();
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| PluginError::NoPrevResult {
                command: "CHECK",
                container: container.to_string(),
            })?;
        let netns_path = self.env.netns.clone().unwrap_or_default();
        let pod_ns = NetNs::open_path(&netns_path).map_err(|source| PluginError::Netns {
            path: netns_path,
            source,
        })?;

        // Our interfaces in the previous result: the container side is the one named
        // CNI_IFNAME with a sandbox; the host side the one without.
        let pod_if = prev
            .interfaces
            .iter()
            .position(|i| i.name == self.env.ifname && i.sandbox.is_some());
        let mut problems = Vec::new();
        if pod_if.is_none() {
            problems.push(format!(
                "prevResult lists no interface {} in a sandbox",
                self.env.ifname
            ));
        }
        let addrs: Vec<IpAddr> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == pod_if)
            .map(|ip| ip.address.addr())
            .collect();
        let host_iface = prev
            .interfaces
            .iter()
            .find(|i| i.sandbox.is_none())
            .map(|i| i.name.clone())
            .unwrap_or_else(|| host_iface_name_for(namespace, pod_name, &self.env.ifname));
        let pod_mac = pod_if
            .and_then(|i| prev.interfaces.get(i))
            .map(|i| i.mac.clone())
            .filter(|m| !m.is_empty());
        let link = PodLink {
            host_iface,
            ifname: self.env.ifname.clone(),
            addrs: addrs.clone(),
            mtu: self.conf.mtu.unwrap_or(0),
        };

        let host = Netlink::current().map_err(|source| PluginError::Kernel {
            step: "opening netlink",
            source,
        })?;
        problems.extend(netsetup::inspect(&host, &pod_ns, &link, pod_mac.as_deref()).await?);

        let client = self.client().await?;
        let held = Self::ipam(&client)
            .handle(container)
            .await
            .map_err(|source| PluginError::ipam(container, source))?
            .map(|h| h.addrs())
            .unwrap_or_default();
        for addr in &addrs {
            if !held.contains(addr) {
                problems.push(format!(
                    "IPAM has no allocation of {addr} for container {container}"
                ));
            }
        }
        let key = endpoint::endpoint_key(namespace, &self.node, pod_name, &self.env.ifname);
        match endpoint::get(&client, &key).await? {
            None => problems.push(format!("the workload endpoint {key} does not exist")),
            Some(w) => {
                if w.spec.container_id != container {
                    problems.push(format!(
                        "the workload endpoint {key} belongs to container {}",
                        w.spec.container_id
                    ));
                }
                for addr in &addrs {
                    if !w.spec.ip_networks.contains(&host_net(*addr)) {
                        problems.push(format!(
                            "the workload endpoint {key} does not list {}",
                            host_net(*addr)
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PluginError::Check { problems })
        }
    }
}
