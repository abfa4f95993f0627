//! The Services' allocation index, kept in the datastore next to the resources, so admission
//! never reads every Service to allocate a cluster IP or a node port.
//!
//! Layout (all under [`INDEX_PREFIX`]):
//! - `ip4/<6 hex digits>` and `ip6/<30 hex digits>`: one key per *bucket* of 256 cluster IPs
//!   (the address number without its last byte, in hex), valued with a JSON object mapping
//!   each address of the bucket held by a Service to that Service's store key:
//!   `{"10.96.16.0":"/serval/resources/services/default/web"}`. Applying 50,000 Services
//!   writes ~200 bucket rows, not 50,000.
//! - `nodeport/<protocol>/<port>`: one key per allocated node port (at most 2,768 per protocol).
//! - [`MARKER_KEY`]: JSON `{"version":2,"next":{"4":"n","6":"n"}}`: the index exists and where
//!   the next automatic allocation of each family starts looking. A missing index (a datastore
//!   written before it) or one of an earlier layout (version 1: one `ip4/<8 hex digits>` key
//!   per address) is built once from a list of every Service. Every apply that writes Services
//!   updates the marker with a compare-and-swap, so two concurrent applies conflict and the
//!   later one retries from a fresh read.
//!
//! Every write of a bucket is conditional on the revision admission read it at (`Update` with
//! that revision, `Create` when it was absent; an emptied bucket stays, as `{}`, so a bucket
//! never disappears under a concurrent writer): a concurrent apply or delete that changed the
//! bucket makes the transaction fail and retry. An apply creates the node port keys its
//! Services newly hold (`Create`) and deletes those they gave up; a delete of a Service frees
//! its addresses in their buckets and deletes its node port keys in the same transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serval_model::k8s::Service;
use serval_model::k8s::service::ServiceIpFamily;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::{KeyValue, Revision, TxnOp};

use crate::{ApiError, Client, Result};

/// Everything of the index lives under this prefix.
pub(crate) const INDEX_PREFIX: &str = "/serval/allocations/services/";
/// The index's marker and allocation cursor (the key the earlier allocation sentinel used: a
/// datastore written before the index has an empty value there, which reads as "not built").
pub(crate) const MARKER_KEY: &str = "/serval/allocations/services";
/// 2: per-bucket address keys (1 was one key per address).
const INDEX_VERSION: u32 = 2;

/// Addresses per bucket: 2^BUCKET_BITS.
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

/// The bucket (family, address number without its last [`BUCKET_BITS`]) holding `ip`.
fn bucket_of(ip: &IpAddr) -> (ServiceIpFamily, u128) {
    (family_of(ip), ip_number(ip) >> BUCKET_BITS)
}

/// The index key of a bucket: the hex form of its addresses without the last byte, so keys
/// sort numerically.
pub(crate) fn bucket_key(f: ServiceIpFamily, bucket: u128) -> String {
    match f {
        ServiceIpFamily::IPv4 => format!("{INDEX_PREFIX}ip4/{bucket:06x}"),
        ServiceIpFamily::IPv6 => format!("{INDEX_PREFIX}ip6/{bucket:030x}"),
    }
}

/// The key version 1 of the index used for one address (the tests check that a bucket's key
/// is the prefix of its addresses' version 1 keys; [`build`] deletes every such key).
#[cfg(test)]
fn v1_ip_key(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{INDEX_PREFIX}ip4/{:08x}", u32::from(*a)),
        IpAddr::V6(a) => format!("{INDEX_PREFIX}ip6/{:032x}", u128::from(*a)),
    }
}

/// A bucket's stored value: address (text) → holder's store key.
fn encode_bucket(f: ServiceIpFamily, holders: &BTreeMap<u128, String>) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(2 + holders.values().map(|h| h.len() + 24).sum::<usize>());
    out.push(b'{');
    for (i, (n, holder)) in holders.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "\"{}\":", ip_from_number(f, *n)).expect("writing to a Vec never fails");
        serde_json::to_writer(&mut out, holder).expect("a string always serializes");
    }
    out.push(b'}');
    out
}

/// Decodes a bucket's stored value; every address must lie in the bucket.
fn decode_bucket(
    kv: &KeyValue,
    f: ServiceIpFamily,
    bucket: u128,
) -> Result<BTreeMap<u128, String>> {
    let corrupt = |reason: String| ApiError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let map: BTreeMap<String, String> =
        serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (addr, holder) in map {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| corrupt(format!("{addr:?} is not an IP address")))?;
        if bucket_of(&ip) != (f, bucket) {
            return Err(corrupt(format!("{ip} does not belong in this bucket")));
        }
        out.insert(ip_number(&ip), holder);
    }
    Ok(out)
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

/// What one stored Service holds in the index: its cluster addresses and the index keys of
/// its node ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Held {
    ips: Vec<IpAddr>,
    ports: BTreeSet<String>,
}

/// Everything a Service holds in the index.
pub(crate) fn held(svc: &Service) -> Held {
    let mut ports = BTreeSet::new();
    for p in &svc.spec.ports {
        if let Some(np) = p.node_port {
            ports.insert(port_key(np.0, &proto_name(&p.protocol)));
        }
    }
    Held {
        ips: svc.spec.cluster_addrs(),
        ports,
    }
}

/// A Service written by an apply: its store key, what its stored version held (nothing for a
/// new one) and what the version written holds.
pub(crate) type ServiceChange = (String, Held, Held);

/// A loaded bucket: its holders and the revision they were read at (0: absent).
#[derive(Debug, Default)]
struct Bucket {
    rev: Revision,
    holders: BTreeMap<u128, String>,
    /// Changed by this apply or delete: written back with a compare-and-swap on `rev`.
    dirty: bool,
}

/// Reads the index for one apply: holders of addresses (bucket by bucket, cached) and of node
/// ports, and what this apply claims on top.
pub(crate) struct Allocator<'c> {
    client: &'c Client,
    marker: Marker,
    marker_rev: Revision,
    /// Loaded buckets by (family, bucket number).
    buckets: HashMap<(ServiceIpFamily, u128), Bucket>,
    /// Node port holders by (port, protocol), read once when first needed.
    ports: Option<BTreeMap<(u16, String), String>>,
    /// Addresses claimed in this apply, with the claimant's store key.
    claimed_ips: HashMap<IpAddr, String>,
}

impl<'c> Allocator<'c> {
    /// Opens the index, building it first when the datastore has none yet (or one of an
    /// earlier layout).
    pub(crate) async fn open(client: &'c Client) -> Result<Allocator<'c>> {
        let store = client.store();
        let mut kv = store.get(MARKER_KEY).await?;
        let parsed = kv.as_ref().and_then(|kv| Marker::parse(&kv.value));
        if parsed.as_ref().is_none_or(|m| m.version < INDEX_VERSION) {
            build(client, kv.as_ref(), parsed).await?;
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
            claimed_ips: HashMap::new(),
        })
    }

    /// The bucket `(f, b)`, read from the store the first time.
    async fn bucket(&mut self, f: ServiceIpFamily, b: u128) -> Result<&mut Bucket> {
        if !self.buckets.contains_key(&(f, b)) {
            let bucket = match self.client.store().get(&bucket_key(f, b)).await? {
                Some(kv) => Bucket {
                    rev: kv.mod_revision,
                    holders: decode_bucket(&kv, f, b)?,
                    dirty: false,
                },
                None => Bucket::default(),
            };
            self.buckets.insert((f, b), bucket);
        }
        Ok(self
            .buckets
            .get_mut(&(f, b))
            .expect("inserted above when missing"))
    }

    /// Whether `ip` is free for `holder` (a store key): claimed by nobody else in this apply
    /// and held by nobody else in the index.
    pub(crate) async fn ip_free_for(&mut self, ip: IpAddr, holder: &str) -> Result<bool> {
        if let Some(h) = self.claimed_ips.get(&ip) {
            return Ok(h == holder);
        }
        let (f, b) = bucket_of(&ip);
        let n = ip_number(&ip);
        Ok(self
            .bucket(f, b)
            .await?
            .holders
            .get(&n)
            .is_none_or(|h| h == holder))
    }

    /// Records that `holder` (a store key) takes `ip` in this apply.
    pub(crate) fn claim_ip(&mut self, ip: IpAddr, holder: &str) {
        self.claimed_ips.insert(ip, holder.to_string());
    }

    /// Node port holders by (port, protocol), excluding `skip` (the Services being applied,
    /// whose ports are decided again by this apply).
    pub(crate) async fn port_holders(
        &mut self,
        skip: &BTreeSet<&str>,
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
            .filter(|(_, h)| !skip.contains(h.as_str()))
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
            if self
                .bucket(f, n >> BUCKET_BITS)
                .await?
                .holders
                .contains_key(&n)
            {
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

    /// Frees the addresses `old` holds and `new` does not (for each change), then records the
    /// addresses `new` newly holds, in their buckets (read now when admission did not).
    async fn update_buckets(&mut self, changes: Vec<ServiceChange>) -> Result<()> {
        for (skey, old, new) in &changes {
            for ip in old.ips.iter().filter(|ip| !new.ips.contains(ip)) {
                let (f, b) = bucket_of(ip);
                let n = ip_number(ip);
                let bucket = self.bucket(f, b).await?;
                if bucket.holders.get(&n) == Some(skey) {
                    bucket.holders.remove(&n);
                    bucket.dirty = true;
                }
            }
        }
        for (mut skey, old, new) in changes {
            let added = new.ips.iter().filter(|ip| !old.ips.contains(ip)).count();
            let mut seen = 0;
            for ip in &new.ips {
                if old.ips.contains(ip) {
                    continue;
                }
                seen += 1;
                let last = seen == added;
                let (f, b) = bucket_of(ip);
                let n = ip_number(ip);
                let bucket = self.bucket(f, b).await?;
                if bucket.holders.get(&n) != Some(&skey) {
                    // The change's key moves into the bucket for its last address.
                    let holder = if last {
                        std::mem::take(&mut skey)
                    } else {
                        skey.clone()
                    };
                    bucket.holders.insert(n, holder);
                    bucket.dirty = true;
                }
            }
        }
        Ok(())
    }

    /// The writes of the changed buckets, each conditional on the revision it was read at.
    fn bucket_ops(&self) -> Vec<TxnOp> {
        let mut dirty: Vec<(&(ServiceIpFamily, u128), &Bucket)> =
            self.buckets.iter().filter(|(_, b)| b.dirty).collect();
        dirty.sort_by_key(|(k, _)| **k);
        dirty
            .into_iter()
            .filter(|(_, b)| b.rev != 0 || !b.holders.is_empty())
            .map(|(&(f, n), b)| {
                let key = bucket_key(f, n);
                let value = encode_bucket(f, &b.holders);
                if b.rev == 0 {
                    TxnOp::Create { key, value }
                } else {
                    TxnOp::Update {
                        key,
                        value,
                        expected: b.rev,
                    }
                }
            })
            .collect()
    }

    /// The ops that make the index follow an apply: the changed buckets (compare-and-swap
    /// each), for each Service written `Create` the node port keys it newly holds and
    /// `Delete` those it gave up (`old` = the stored version), plus the marker's
    /// compare-and-swap.
    pub(crate) async fn ops(mut self, changes: Vec<ServiceChange>) -> Result<Vec<TxnOp>> {
        let mut port_ops = Vec::new();
        let mut created: BTreeMap<&str, &str> = BTreeMap::new();
        let mut deleted: BTreeSet<&str> = BTreeSet::new();
        for (skey, old, new) in &changes {
            for k in new.ports.difference(&old.ports) {
                created.insert(k, skey);
            }
            deleted.extend(old.ports.difference(&new.ports).map(String::as_str));
        }
        for (key, holder) in created {
            let (key, value) = (key.to_string(), holder.as_bytes().to_vec());
            // Handed from one applied Service to another in this apply: one write.
            if deleted.remove(key.as_str()) {
                port_ops.push(TxnOp::Put { key, value });
            } else {
                port_ops.push(TxnOp::Create { key, value });
            }
        }
        port_ops.extend(deleted.into_iter().map(|key| TxnOp::Delete {
            key: key.to_string(),
            expected: None,
        }));
        self.update_buckets(changes).await?;
        let mut ops = self.bucket_ops();
        ops.extend(port_ops);
        ops.push(TxnOp::Update {
            key: MARKER_KEY.to_string(),
            value: self.marker.to_json(),
            expected: self.marker_rev,
        });
        Ok(ops)
    }
}

/// The index ops that go with deleting `services` (store key and what each held): their
/// addresses freed in their buckets (compare-and-swap each, so a concurrent apply or delete
/// of the same bucket makes one of them retry) and their node port keys deleted. Builds the
/// index first when there is none yet (or one of an earlier layout).
pub(crate) async fn delete_ops(client: &Client, services: &[(String, Held)]) -> Result<Vec<TxnOp>> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let mut alloc = Allocator::open(client).await?;
    let changes: Vec<ServiceChange> = services
        .iter()
        .map(|(skey, held)| (skey.clone(), held.clone(), Held::default()))
        .collect();
    alloc.update_buckets(changes).await?;
    let mut ops = alloc.bucket_ops();
    let ports: BTreeSet<&String> = services.iter().flat_map(|(_, h)| &h.ports).collect();
    ops.extend(ports.into_iter().map(|key| TxnOp::Delete {
        key: key.clone(),
        expected: None,
    }));
    Ok(ops)
}

/// What a stored resource holds in the index when it is a Service (for its delete).
pub(crate) fn held_by_stored(kv: &KeyValue) -> Option<Held> {
    if !kv
        .key
        .starts_with(&ResourceKey::prefix(Kind::Service, None))
    {
        return None;
    }
    match crate::decode(kv) {
        Ok(Resource::Service(s)) => Some(held(&s)),
        _ => None,
    }
}

/// Builds the index from every stored Service, once: for a datastore written before it existed,
/// or by a version with another layout (its address keys are deleted in the same
/// transaction). Concurrent builders conflict on the marker; the loser's apply retries and
/// finds the index built.
async fn build(client: &Client, marker: Option<&KeyValue>, parsed: Option<Marker>) -> Result<()> {
    let store = client.store();
    let (kvs, _) = store
        .list(&ResourceKey::prefix(Kind::Service, None))
        .await?;
    let mut ops: BTreeMap<String, TxnOp> = BTreeMap::new();
    // Address keys of an earlier layout (and stale buckets): gone, unless rewritten below.
    // Unconditionally: the marker's compare-and-swap alone decides which of concurrent
    // builders wins (a conditional delete of a key a winning builder already deleted fails
    // with `NotFound`, which no apply or delete retries).
    for family in ["ip4/", "ip6/"] {
        let (old, _) = store.list(&format!("{INDEX_PREFIX}{family}")).await?;
        for kv in old {
            ops.insert(
                kv.key.clone(),
                TxnOp::Delete {
                    key: kv.key,
                    expected: None,
                },
            );
        }
    }
    let mut buckets: BTreeMap<(ServiceIpFamily, u128), BTreeMap<u128, String>> = BTreeMap::new();
    for kv in &kvs {
        let Resource::Service(s) = crate::decode(kv)? else {
            continue;
        };
        let held = held(&s);
        for ip in &held.ips {
            buckets
                .entry(bucket_of(ip))
                .or_default()
                .insert(ip_number(ip), kv.key.clone());
        }
        for key in held.ports {
            ops.insert(
                key.clone(),
                TxnOp::Put {
                    key,
                    value: kv.key.clone().into_bytes(),
                },
            );
        }
    }
    for ((f, b), holders) in &buckets {
        let key = bucket_key(*f, *b);
        ops.insert(
            key.clone(),
            TxnOp::Put {
                key,
                value: encode_bucket(*f, holders),
            },
        );
    }
    // An index of an earlier layout keeps its allocation cursor.
    let value = Marker {
        version: INDEX_VERSION,
        next: parsed.map(|m| m.next).unwrap_or_default(),
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
        buckets = buckets.len(),
        "building the Services' allocation index"
    );
    store.txn(ops).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_sort_numerically_and_are_the_prefix_of_their_addresses_v1_keys() {
        let a: IpAddr = "10.96.1.255".parse().unwrap();
        let b: IpAddr = "10.96.2.0".parse().unwrap();
        let (fa, ba) = bucket_of(&a);
        let (fb, bb) = bucket_of(&b);
        assert!(bucket_key(fa, ba) < bucket_key(fb, bb));
        assert_eq!(bucket_key(fa, ba), format!("{INDEX_PREFIX}ip4/0a6001"));
        assert!(v1_ip_key(&a).starts_with(&bucket_key(fa, ba)));
        assert!(!v1_ip_key(&b).starts_with(&bucket_key(fa, ba)));
        let v6: IpAddr = "fd00:10:96::1:2".parse().unwrap();
        let (f6, b6) = bucket_of(&v6);
        assert!(v1_ip_key(&v6).starts_with(&bucket_key(f6, b6)));
        assert_eq!(v1_ip_key(&v6).len(), bucket_key(f6, b6).len() + 2);
        assert_eq!(
            port_key(30000, "TCP"),
            format!("{INDEX_PREFIX}nodeport/TCP/30000")
        );
    }

    #[test]
    fn bucket_values_round_trip_and_reject_foreign_addresses() {
        let f = ServiceIpFamily::IPv6;
        let ip: IpAddr = "fd00:10:96::1:2".parse().unwrap();
        let (_, b) = bucket_of(&ip);
        let holders: BTreeMap<u128, String> = [(
            ip_number(&ip),
            "/serval/resources/services/default/a\"b".to_string(),
        )]
        .into();
        let value = encode_bucket(f, &holders);
        assert_eq!(
            String::from_utf8_lossy(&value),
            r#"{"fd00:10:96::1:2":"/serval/resources/services/default/a\"b"}"#
        );
        let kv = KeyValue {
            key: bucket_key(f, b),
            value,
            create_revision: 1,
            mod_revision: 1,
        };
        assert_eq!(decode_bucket(&kv, f, b).unwrap(), holders);
        let err = decode_bucket(&kv, f, b + 1).expect_err("address of another bucket");
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(
            decode_bucket(&kv, f, b).is_ok() && encode_bucket(f, &BTreeMap::new()) == b"{}",
            "an emptied bucket is {{}}"
        );
    }
}
