//! Linux bridges (the lab's underlay segment). Enslaving is
//! [`Netlink::link_set_controller`].

use rtnetlink::LinkBridge;

use crate::{Netlink, error::Result, link::validate_ifname};

impl Netlink {
    /// Creates a bridge (`ip link add NAME type bridge`), up, and returns its interface index.
    /// [`crate::Error::is_exists`] when the name is taken.
    pub async fn bridge_add(&self, name: &str) -> Result<u32> {
        validate_ifname(name)?;
        self.handle()
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(self.err("creating bridge", name))?;
        tracing::debug!(name, netns = ?self.netns().name(), "created bridge");
        self.link_index(name).await
    }

    /// The links enslaved to the bridge `name`.
    pub async fn bridge_ports(&self, name: &str) -> Result<Vec<crate::Link>> {
        let index = self.link_index(name).await?;
        Ok(self
            .links()
            .await?
            .into_iter()
            .filter(|l| l.controller == Some(index))
            .collect())
    }
}
