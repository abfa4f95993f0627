//! [`Netlink`]: an rtnetlink connection bound to one network namespace. Every kernel object
//! operation (links, addresses, routes, neighbours, VXLAN, bridges) is a method on it, in the
//! file named after the object.

use std::{fmt::Display, sync::Arc};

use futures::StreamExt;
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    proto::Connection,
};

use crate::error::{Error, NsLabel, Result};

/// An rtnetlink handle plus the task driving its connection. Clones share the connection;
/// dropping the last one closes the socket.
///
/// Get one for a namespace with [`crate::NetNs::netlink`], or for the calling thread's own
/// namespace with [`Netlink::current`].
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    netns: NsLabel,
    /// Held only for its `Drop`.
    #[expect(
        dead_code,
        reason = "kept alive for Drop, which aborts the connection task"
    )]
    connection: Arc<ConnectionTask>,
}

/// Aborts the connection task when the last [`Netlink`] clone goes away.
#[derive(Debug)]
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace (normally the host's). Must be called
    /// within a tokio runtime.
    pub fn current() -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime {
                op: "opening a netlink connection",
            });
        }
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| Error::Io {
                op: "opening netlink socket",
                object: "NETLINK_ROUTE".into(),
                netns: NsLabel::current(),
                source,
            })?;
        Ok(Self::from_parts(connection, handle, NsLabel::current()))
    }

    pub(crate) fn from_parts(
        connection: Connection<RouteNetlinkMessage>,
        handle: rtnetlink::Handle,
        netns: NsLabel,
    ) -> Self {
        Self {
            handle,
            netns,
            connection: Arc::new(ConnectionTask(tokio::spawn(connection))),
        }
    }

    /// The raw rtnetlink handle, for requests this crate does not wrap.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The namespace this connection acts in, as errors name it.
    pub fn netns(&self) -> &NsLabel {
        &self.netns
    }

    /// Maps an rtnetlink error into this crate's, naming operation, object and namespace.
    pub(crate) fn err(
        &self,
        op: &'static str,
        object: impl Display,
    ) -> impl FnOnce(rtnetlink::Error) -> Error {
        let object = object.to_string();
        let netns = self.netns.clone();
        move |source| Error::Netlink {
            op,
            object,
            netns,
            source: Box::new(source),
        }
    }

    /// Sends one request that expects only an acknowledgement, with the given extra header
    /// flags (`NLM_F_CREATE`, `NLM_F_APPEND`, ...); for the few requests whose flags
    /// rtnetlink's builders do not let us choose.
    pub(crate) async fn request_ack(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request)?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(err) = response.payload
                && err.code.is_some()
            {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }
}
