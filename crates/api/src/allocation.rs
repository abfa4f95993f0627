//! The Services' allocation index, kept in the datastore next to the resources, so admission
//! never reads every Service to allocate a cluster IP or a node port.
//!
//! Layout (all under [`INDEX_PREFIX`]):
//! - `ip4/<8 hex digits>` and `ip6/<32 hex digits>`: one key per allocated cluster IP, valued
//!   with the store key of the Service holding it. The hex form sorts numerically, so the 256
//!   addresses sharing all but the last byte form one prefix (a *bucket*) that one `list` reads.
//! - `nodeport/<protocol>/<port>`: one key per allocated node port (at most 2,768 per protocol).
//! - [`MARKER_KEY`]: JSON `{"version":1,"next":{"4":"n","6":"n"}}`: the index exists (built once
//!   from a list of every Service when missing — a datastore written by an earlier version) and
//!   where the next automatic allocation of each family starts looking. Every apply that
//!   writes Services updates it with a compare-and-swap, so two concurrent applies conflict and
//!   the later one retries from a fresh read (as the earlier sentinel did).
//!
//! An apply creates the keys its Services newly hold (`Create`: a concurrent apply that took
//! the same address makes the transaction fail and retry) and deletes those they gave up; a
//! delete of a Service deletes its keys in the same transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serval_model::k8s::Service;
use serval_model::k8s::service::ServiceIpFamily;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::{KeyValue, Revision, TxnOp};

use crate::{Client, Result};

/// Everything of the index lives under this prefix.
pub(crate) const INDEX_PREFIX: &str = "/serval/allocations/services/";
/// The index's marker and allocation cursor (the key the earlier allocation sentinel used: a
/// datastore written before the index has an empty value there, which reads as "not built").
pub(crate) const MARKER_KEY: &str = "/serval/allocations/services";
const INDEX_VERSION: u32 = 1;

/// Addresses per bucket (one `list` each).
const BUCKET_BITS: u32 = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Marker {
    version: u32,
    /// Per family (`"4"`, `"6"`): the offset into the family's range after the last address
    /// allocated automatically.
    next: BTreeMap<String, u128>,
}

impl Marker {
    fn parse(bytes: &[u8]) -> Option<Marker> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let version = u32::try_from(v.get("version")?.as_u64()?).ok()?;
        let next = v
            .get("next")
            .and_then(|n| n.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        Some(Marker { version, next })
    }

    fn to_json(&self) -> Vec<u8> {
        let next: serde_json::Map<String, serde_json::Value> = self
            .next
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string().into()))
            .collect();
        serde_json::json!({ "version": self.version, "next": next })
            .to_string()
            .into_bytes()
    }
}

fn family_tag(f: ServiceIpFamily) -> &'static str {
    match f {
        ServiceIpFamily::IPv4 => "4",
        ServiceIpFamily::IPv6 => "6",
    }
}

fn family_of(ip: &IpAddr) -> ServiceIpFamily {
    if ip.is_ipv4() {
        ServiceIpFamily::IPv4
    } else {
        ServiceIpFamily::IPv6
    }
}

fn ip_number(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn ip_from_number(f: ServiceIpFamily, n: u128) -> IpAddr {
    match f {
        ServiceIpFamily::IPv4 => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
        ServiceIpFamily::IPv6 => IpAddr::V6(std::net::Ipv6Addr::from(n)),
    }
}

/// The index key of a cluster IP.
pub(crate) fn ip_key(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{INDEX_PREFIX}ip4/{:08x}", u32::from(*a)),
        IpAddr::V6(a) => format!("{INDEX_PREFIX}ip6/{:032x}", u128::from(*a)),
    }
}

/// The prefix of the bucket holding address number `n` of family `f`.
fn bucket_prefix(f: ServiceIpFamily, bucket: u128) -> String {
    let n = bucket << BUCKET_BITS;
    let full = ip_key(&ip_from_number(f, n));
    full[..full.len() - 2].to_string()
}

fn port_prefix(proto: &str) -> String {
    format!("{INDEX_PREFIX}nodeport/{proto}/")
}

/// The index key of a node port.
pub(crate) fn port_key(port: u16, proto: &str) -> String {
    format!("{}{port}", port_prefix(proto))
}

/// `format!("{:?}", protocol)`, as admission names protocols.
fn proto_name(p: &serval_model::types::Protocol) -> String {
    format!("{p:?}")
}

/// A Service written by an apply: its store key, the index keys of its stored version (empty
/// for a new one) and of the version written.
pub(crate) type ServiceChange = (String, BTreeSet<String>, BTreeSet<String>);

/// Every index key a stored Service holds.
pub(crate) fn keys_of(svc: &Service) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = svc.spec.cluster_addrs().iter().map(ip_key).collect();
    for p in &svc.spec.ports {
        if let Some(np) = p.node_port {
            out.insert(port_key(np.0, &proto_name(&p.protocol)));
        }
    }
    out
}

/// The index ops that go with deleting `kv` (a stored resource): its Service's keys.
pub(crate) fn delete_ops(kv: &KeyValue) -> Vec<TxnOp> {
    if !kv
        .key
        .starts_with(&ResourceKey::prefix(Kind::Service, None))
    {
        return Vec::new();
    }
    match crate::decode(kv) {
        Ok(Resource::Service(s)) => keys_of(&s)
            .into_iter()
            .map(|key| TxnOp::Delete {
                key,
                expected: None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads the index for one apply: holders of addresses (bucket by bucket, cached) and of node
/// ports, and what this apply claims on top.
pub(crate) struct Allocator<'c> {
    client: &'c Client,
    marker: Marker,
    marker_rev: Revision,
    /// Loaded buckets: (family, bucket number) → address number → holder's store key.
    buckets: HashMap<(ServiceIpFamily, u128), BTreeMap<u128, String>>,
    /// Node port holders by (port, protocol), read once when first needed.
    ports: Option<BTreeMap<(u16, String), String>>,
    /// Addresses claimed in this apply, with the claimant's store key.
    claimed_ips: BTreeMap<IpAddr, String>,
}

impl<'c> Allocator<'c> {
    /// Opens the index, building it first when the datastore has none yet.
    pub(crate) async fn open(client: &'c Client) -> Result<Allocator<'c>> {
        let store = client.store();
        let mut kv = store.get(MARKER_KEY).await?;
        let parsed = kv
            .as_ref()
            .and_then(|kv| Marker::parse(&kv.value))
            .filter(|m| m.version >= INDEX_VERSION);
        if parsed.is_none() {
            build(client, kv.as_ref()).await?;
            kv = store.get(MARKER_KEY).await?;
        }
        let (marker, marker_rev) = match &kv {
            Some(kv) => (
                Marker::parse(&kv.value).unwrap_or_default(),
                kv.mod_revision,
            ),
            None => (Marker::default(), 0),
        };
        Ok(Allocator {
            client,
            marker,
            marker_rev,
            buckets: HashMap::new(),
            ports: None,
            claimed_ips: BTreeMap::new(),
        })
    }

    async fn bucket(&mut self, f: ServiceIpFamily, n: u128) -> Result<&BTreeMap<u128, String>> {
        let b = n >> BUCKET_BITS;
        if !self.buckets.contains_key(&(f, b)) {
            let (kvs, _) = self.client.store().list(&bucket_prefix(f, b)).await?;
            let mut m = BTreeMap::new();
            for kv in kvs {
                let hex = kv.key.rsplit('/').next().unwrap_or("");
                if let Ok(v) = u128::from_str_radix(hex, 16) {
                    m.insert(v, String::from_utf8_lossy(&kv.value).into_owned());
                }
            }
            self.buckets.insert((f, b), m);
        }
        Ok(&self.buckets[&(f, b)])
    }

    /// Who holds `ip`: a claim of this apply, else the index.
    pub(crate) async fn ip_holder(&mut self, ip: IpAddr) -> Result<Option<String>> {
        if let Some(h) = self.claimed_ips.get(&ip) {
            return Ok(Some(h.clone()));
        }
        let n = ip_number(&ip);
        Ok(self.bucket(family_of(&ip), n).await?.get(&n).cloned())
    }

    /// Records that `holder` (a store key) takes `ip` in this apply.
    pub(crate) fn claim_ip(&mut self, ip: IpAddr, holder: &str) {
        self.claimed_ips.insert(ip, holder.to_string());
    }

    /// Node port holders by (port, protocol), excluding `skip` (the Services being applied,
    /// whose ports are decided again by this apply).
    pub(crate) async fn port_holders(
        &mut self,
        skip: &BTreeSet<String>,
    ) -> Result<BTreeMap<(u16, String), ResourceKey>> {
        if self.ports.is_none() {
            let (kvs, _) = self
                .client
                .store()
                .list(&format!("{INDEX_PREFIX}nodeport/"))
                .await?;
            let mut m = BTreeMap::new();
            for kv in kvs {
                let rest = &kv.key[INDEX_PREFIX.len() + "nodeport/".len()..];
                if let Some((proto, port)) = rest.split_once('/')
                    && let Ok(port) = port.parse::<u16>()
                {
                    m.insert(
                        (port, proto.to_string()),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    );
                }
            }
            self.ports = Some(m);
        }
        Ok(self
            .ports
            .iter()
            .flatten()
            .filter(|(_, h)| !skip.contains(*h))
            .filter_map(|(k, h)| Some((k.clone(), crate::key_from_store_key(h)?)))
            .collect())
    }

    /// The next free address of family `f` in `[first, last]`, starting after the last one
    /// allocated automatically (wrapping around), claimed for `holder`.
    pub(crate) async fn next_free(
        &mut self,
        f: ServiceIpFamily,
        first: u128,
        last: u128,
        holder: &str,
    ) -> Result<Option<IpAddr>> {
        let size = last - first + 1;
        let start = self
            .marker
            .next
            .get(family_tag(f))
            .copied()
            .unwrap_or(0)
            .min(size - 1);
        let mut i = 0u128;
        while i < size {
            let n = first + (start + i) % size;
            let ip = ip_from_number(f, n);
            if self.claimed_ips.contains_key(&ip) {
                i += 1;
                continue;
            }
            let bucket = self.bucket(f, n).await?;
            if bucket.contains_key(&n) {
                i += 1;
                continue;
            }
            self.claim_ip(ip, holder);
            self.marker
                .next
                .insert(family_tag(f).to_string(), (n - first + 1) % size);
            return Ok(Some(ip));
        }
        Ok(None)
    }

    /// The ops that make the index follow an apply: for each Service written, `Create` the
    /// keys it newly holds and `Delete` those it gave up (`old` = the stored version), plus the
    /// marker's compare-and-swap.
    /// `changes` holds each written Service's store key and the index keys it held and holds
    /// ([`keys_of`] of the stored and the new version).
    pub(crate) fn ops(self, changes: &[ServiceChange]) -> Vec<TxnOp> {
        let mut created: BTreeMap<String, String> = BTreeMap::new();
        let mut deleted: BTreeSet<String> = BTreeSet::new();
        for (skey, old_keys, new_keys) in changes {
            for k in new_keys.difference(old_keys) {
                created.insert(k.clone(), skey.clone());
            }
            deleted.extend(old_keys.difference(new_keys).cloned());
        }
        let mut ops = Vec::new();
        for (key, holder) in created {
            // Handed from one applied Service to another in this apply: one write.
            if deleted.remove(&key) {
                ops.push(TxnOp::Put {
                    key,
                    value: holder.into_bytes(),
                });
            } else {
                ops.push(TxnOp::Create {
                    key,
                    value: holder.into_bytes(),
                });
            }
        }
        ops.extend(deleted.into_iter().map(|key| TxnOp::Delete {
            key,
            expected: None,
        }));
        let value = self.marker.to_json();
        ops.push(TxnOp::Update {
            key: MARKER_KEY.to_string(),
            value,
            expected: self.marker_rev,
        });
        ops
    }
}

/// Builds the index from every stored Service (once, for a datastore written before it
/// existed). Concurrent builders conflict on the marker; the loser's apply retries and finds
/// the index built.
async fn build(client: &Client, marker: Option<&KeyValue>) -> Result<()> {
    let (kvs, _) = client
        .store()
        .list(&ResourceKey::prefix(Kind::Service, None))
        .await?;
    let mut ops: BTreeMap<String, TxnOp> = BTreeMap::new();
    for kv in &kvs {
        let Resource::Service(s) = crate::decode(kv)? else {
            continue;
        };
        for key in keys_of(&s) {
            ops.insert(
                key.clone(),
                TxnOp::Put {
                    key,
                    value: kv.key.clone().into_bytes(),
                },
            );
        }
    }
    let value = Marker {
        version: INDEX_VERSION,
        next: BTreeMap::new(),
    }
    .to_json();
    let mut ops: Vec<TxnOp> = ops.into_values().collect();
    ops.push(match marker {
        Some(kv) => TxnOp::Update {
            key: MARKER_KEY.to_string(),
            value,
            expected: kv.mod_revision,
        },
        None => TxnOp::Create {
            key: MARKER_KEY.to_string(),
            value,
        },
    });
    tracing::info!(
        services = kvs.len(),
        "building the Services' allocation index"
    );
    client.store().txn(ops).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_buckets_are_prefixes() {
        let a: IpAddr = "10.96.1.255".parse().unwrap();
        let b: IpAddr = "10.96.2.0".parse().unwrap();
        assert!(ip_key(&a) < ip_key(&b));
        let f = ServiceIpFamily::IPv4;
        assert!(ip_key(&a).starts_with(&bucket_prefix(f, ip_number(&a) >> BUCKET_BITS)));
        assert!(!ip_key(&b).starts_with(&bucket_prefix(f, ip_number(&a) >> BUCKET_BITS)));
        let v6: IpAddr = "fd00:10:96::1:2".parse().unwrap();
        let f6 = ServiceIpFamily::IPv6;
        assert!(ip_key(&v6).starts_with(&bucket_prefix(f6, ip_number(&v6) >> BUCKET_BITS)));
        assert_eq!(
            port_key(30000, "TCP"),
            format!("{INDEX_PREFIX}nodeport/TCP/30000")
        );
    }
}
