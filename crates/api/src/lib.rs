//! The typed resource client: `serval-model` resources stored in a `serval-store` datastore.
//!
//! Every component that reads or writes resources goes through [`Client`]: the CLI's
//! apply/get/delete, the CNI plugin's workload endpoints, the agent's watch. It owns the
//! storage conventions (key layout from [`ResourceKey::store_key`], JSON values,
//! `metadata.resourceVersion` = the key's `mod_revision`) and the apply semantics:
//! validate everything first, then store everything in one transaction, or nothing.

mod admission;
mod allocation;
mod error;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serval_model::{Kind, Resource, ResourceKey};
use serval_store::{Datastore, EventKind, KeyValue, Revision, StoreError, TxnOp};

pub use admission::{SERVICE_CIDR_V4, SERVICE_CIDR_V6};
pub use error::ApiError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Where all resources live in the datastore.
pub const RESOURCE_PREFIX: &str = "/serval/resources/";

/// How often an apply that raced concurrent writers is retried from a fresh read.
const MAX_APPLY_ATTEMPTS: u32 = 30;

/// Up to this many resources of one kind in an apply, their stored versions are read key by
/// key; above it, the kind is listed once.
const KEY_BY_KEY_MAX: usize = 64;

/// From this many resources on, an apply is validated on a blocking thread.
const BACKGROUND_VALIDATE_MIN: usize = 1024;

/// How `apply` treats resources that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create or update (`serval apply`).
    Apply,
    /// Create only; an existing resource is an error (`serval create`).
    Create,
}

/// What `apply` did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// A change seen by [`ResourceWatch`].
#[derive(Debug, Clone)]
pub enum ResourceEvent {
    /// Created or updated.
    Applied(Resource),
    /// Deleted; the last stored state where the backend knows it.
    Deleted {
        key: ResourceKey,
        last: Option<Resource>,
    },
}

/// The typed client.
#[derive(Debug, Clone)]
pub struct Client {
    store: Arc<dyn Datastore>,
}

impl Client {
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Client { store }
    }

    /// Open the datastore at `url` (`sqlite:///path`, `etcd://host:port`).
    pub async fn open(url: &str) -> Result<Self> {
        Ok(Client::new(serval_store::open(url).await?))
    }

    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// One resource, or `None`.
    pub async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        match self.store.get(&key.store_key()).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every resource of `kind` (in `namespace`, or in all namespaces with `None`), sorted by
    /// namespace and name, and the revision the list was read at.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Resource>, Revision)> {
        let (kvs, rev) = self
            .store
            .list(&ResourceKey::prefix(kind, namespace))
            .await?;
        let items = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok((items, rev))
    }

    /// Every resource of every kind, and the revision it was read at (the agent's initial sync).
    pub async fn list_all(&self) -> Result<(Vec<Resource>, Revision)> {
        let (kvs, rev) = self.store.list(RESOURCE_PREFIX).await?;
        let items = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok((items, rev))
    }

    /// Validate `resources` against each other and the stored state, then store all of them in
    /// one transaction. On any error nothing is stored. A concurrent writer touching the same
    /// keys makes the whole apply retry from a fresh read.
    pub async fn apply(
        &self,
        resources: Vec<Resource>,
        mode: ApplyMode,
    ) -> Result<Vec<(ResourceKey, Outcome)>> {
        let (outcomes, _spent) = self.apply_keeping(Arc::new(resources), mode).await?;
        Ok(outcomes)
    }

    /// [`Client::apply`] for a caller that frees what the apply built itself, later or never: a
    /// command about to exit prints the outcomes first and lets the process exit reclaim the
    /// rest (freeing 50,000 Services' working copy and input costs tens of ms of CPU after the
    /// commit). The caller keeps its own reference to `input` for the same reason.
    pub async fn apply_keeping(
        &self,
        input: Arc<Vec<Resource>>,
        mode: ApplyMode,
    ) -> Result<(Vec<(ResourceKey, Outcome)>, Spent)> {
        retry_raced("apply", || self.try_apply(&input, mode)).await
    }

    /// One attempt of [`Client::apply`]. `input` is never written: admission copies only the
    /// resources it fills in (allocations, a pod's node; [`admission::Admitted`]), and a retry
    /// starts again from `input`.
    async fn try_apply(
        &self,
        input: &Arc<Vec<Resource>>,
        mode: ApplyMode,
    ) -> Result<(Vec<(ResourceKey, Outcome)>, Spent)> {
        let started = std::time::Instant::now();
        // Existing state of the applied resources, for CAS and outcomes: read key by key for a
        // small apply, kind by kind for a large one (never every resource of a kind to change
        // one). Cross-resource validation reads the kinds it checks (pools, tiers).
        let kinds: BTreeSet<Kind> = input.iter().map(|r| r.kind()).collect();
        // Each resource's store key, computed once (index-aligned with the input).
        let skeys: Vec<String> = input.iter().map(store_key_of).collect();
        let mut existing: BTreeMap<String, (Resource, Revision)> = BTreeMap::new();
        let mut existing_list = Vec::new();
        for kind in &kinds {
            let of_kind: Vec<&String> = input
                .iter()
                .zip(&skeys)
                .filter(|(r, _)| r.kind() == *kind)
                .map(|(_, skey)| skey)
                .collect();
            let validated = matches!(kind, Kind::IPPool | Kind::Tier);
            if validated || of_kind.len() > KEY_BY_KEY_MAX {
                let (kvs, _) = self.store.list(&ResourceKey::prefix(*kind, None)).await?;
                for kv in &kvs {
                    let r = decode(kv)?;
                    if validated {
                        existing_list.push(r.clone());
                    }
                    existing.insert(kv.key.clone(), (r, kv.mod_revision));
                }
            } else {
                for skey in of_kind {
                    if let Some(kv) = self.store.get(skey).await? {
                        existing.insert(skey.clone(), (decode(&kv)?, kv.mod_revision));
                    }
                }
            }
        }
        // A policy names its tier, which may be stored already: validation needs the stored
        // tiers whenever the apply holds a policy, also when it holds no Tier.
        let has_policy =
            kinds.contains(&Kind::NetworkPolicy) || kinds.contains(&Kind::GlobalNetworkPolicy);
        if has_policy && !kinds.contains(&Kind::Tier) {
            let (kvs, _) = self
                .store
                .list(&ResourceKey::prefix(Kind::Tier, None))
                .await?;
            for kv in &kvs {
                existing_list.push(decode(kv)?);
            }
        }
        let read = started.elapsed();
        // A large apply is validated on a blocking thread, off the runtime.
        if input.len() >= BACKGROUND_VALIDATE_MIN {
            let input = Arc::clone(input);
            tokio::task::spawn_blocking(move || serval_model::validate_set(&input, &existing_list))
                .await
                .expect("validation does not panic")?;
        } else {
            serval_model::validate_set(input, &existing_list)?;
        }
        let validated = started.elapsed();
        let mut changes = admission::Admitted::new();
        admission::bind_pods(self, input, &mut changes, &skeys, &existing).await?;
        let alloc =
            admission::allocate_services(self, input, &mut changes, &skeys, &existing).await?;
        let copied = changes.len();
        let admitted = started.elapsed();

        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let pid = std::process::id();
        // Stored values are compared without their resourceVersion (the key's mod_revision).
        for (old, _) in existing.values_mut() {
            old.meta_mut().resource_version = None;
        }
        let cx = EncodeContext {
            existing: &existing,
            mode,
            now: &now,
            pid,
        };
        let Encoded {
            mut ops,
            outcomes,
            service_changes,
        } = encode_all(&cx, input, changes, skeys, encode_threads())?;
        let values = started.elapsed();
        if let Some(alloc) = alloc.filter(|_| !ops.is_empty()) {
            ops.extend(alloc.ops(service_changes).await?);
        }
        let encoded = started.elapsed();
        let written = ops.len();
        if !ops.is_empty() {
            self.store.txn(ops).await?;
        }
        // Where an apply's time goes (`serval --log-level serval_api=debug apply ...`).
        tracing::debug!(
            resources = outcomes.len(),
            written,
            read_ms = ms(read),
            validate_ms = ms(validated - read),
            copied,
            admit_ms = ms(admitted - validated),
            encode_ms = ms(encoded - admitted),
            values_ms = ms(values - admitted),
            store_ms = ms(started.elapsed() - encoded),
            "apply"
        );
        Ok((
            outcomes,
            Spent {
                _existing: existing,
            },
        ))
    }

    /// Write one resource written by Serval itself (a workload endpoint, a status), bypassing
    /// user admission but not validation of its shape. With `expected`, compare-and-swap.
    pub async fn put(
        &self,
        mut resource: Resource,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let skey = resource.key().store_key();
        resource.meta_mut().resource_version = None;
        let value = resource.to_json();
        let rev = match expected {
            Some(0) => self.store.create(&skey, value).await?,
            Some(rev) => self.store.update(&skey, value, rev).await?,
            None => {
                self.store
                    .txn(vec![TxnOp::Put { key: skey, value }])
                    .await?
            }
        };
        Ok(rev)
    }

    /// Delete resources in one transaction. Deleting a Namespace deletes everything in it, as
    /// Kubernetes does. A missing resource is an error unless `ignore_not_found`. A concurrent
    /// writer touching the same keys (or the same allocation index bucket) makes the whole
    /// delete retry from a fresh read.
    pub async fn delete(
        &self,
        keys: &[ResourceKey],
        ignore_not_found: bool,
    ) -> Result<Vec<ResourceKey>> {
        retry_raced("delete", || self.try_delete(keys, ignore_not_found)).await
    }

    async fn try_delete(
        &self,
        keys: &[ResourceKey],
        ignore_not_found: bool,
    ) -> Result<Vec<ResourceKey>> {
        let mut ops = Vec::new();
        let mut deleted = Vec::new();
        let mut seen = BTreeSet::new();
        // The deleted Services and what they hold in the allocation index (crate::allocation).
        let mut services = Vec::new();
        for key in keys {
            let skey = key.store_key();
            if !seen.insert(skey.clone()) {
                continue;
            }
            let before = deleted.len();
            let found = match self.store.get(&skey).await? {
                Some(kv) => {
                    if let Some(held) = allocation::held_by_stored(&kv) {
                        services.push((kv.key.clone(), held));
                    }
                    ops.push(TxnOp::Delete {
                        key: skey,
                        expected: Some(kv.mod_revision),
                    });
                    deleted.push(key.clone());
                    true
                }
                None => false,
            };
            if key.kind == Kind::Namespace {
                for info in serval_model::kind::KINDS.iter().filter(|i| i.namespaced) {
                    let (kvs, _) = self
                        .store
                        .list(&ResourceKey::prefix(info.kind, Some(&key.name)))
                        .await?;
                    for kv in kvs {
                        if seen.insert(kv.key.clone()) {
                            deleted.push(decode(&kv)?.key());
                            if let Some(held) = allocation::held_by_stored(&kv) {
                                services.push((kv.key.clone(), held));
                            }
                            ops.push(TxnOp::Delete {
                                key: kv.key,
                                expected: Some(kv.mod_revision),
                            });
                        }
                    }
                }
            }
            // A namespace need not exist as an object to hold resources: deleting it deletes
            // them; it is "not found" only when there was nothing at all.
            if !found && deleted.len() == before && !ignore_not_found {
                return Err(ApiError::NotFound { key: key.clone() });
            }
        }
        if !ops.is_empty() {
            ops.extend(allocation::delete_ops(self, &services).await?);
            self.store.txn(ops).await?;
        }
        Ok(deleted)
    }

    /// Follow every resource change after `after` (typically the revision of a `list_all`).
    pub async fn watch(&self, after: Revision) -> Result<ResourceWatch> {
        Ok(ResourceWatch {
            inner: self.store.watch(RESOURCE_PREFIX, after).await?,
        })
    }
}

/// What an apply built on the way to its transaction and its caller may free later (the stored
/// versions it read): freed when dropped. See [`Client::apply_keeping`].
pub struct Spent {
    _existing: BTreeMap<String, (Resource, Revision)>,
}

impl std::fmt::Debug for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spent")
            .field("existing", &self._existing.len())
            .finish()
    }
}

/// From this many resources on, an apply's values are encoded on several threads.
const PARALLEL_ENCODE_MIN: usize = 4096;
/// At most this many encoding threads.
const MAX_ENCODE_THREADS: usize = 4;

/// How many threads a large apply's values are encoded on: the available cores, up to
/// [`MAX_ENCODE_THREADS`].
fn encode_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_ENCODE_THREADS)
}

/// What every resource's encoding reads.
struct EncodeContext<'a> {
    /// Stored versions by store key, without their resourceVersion.
    existing: &'a BTreeMap<String, (Resource, Revision)>,
    mode: ApplyMode,
    /// Creation timestamp of created resources (RFC 3339).
    now: &'a str,
    /// [`std::process::id`], for uids.
    pid: u32,
}

/// The writes, outcomes and Service allocation changes of a run of resources, in input order.
#[derive(Debug, Default, PartialEq)]
struct Encoded {
    ops: Vec<TxnOp>,
    outcomes: Vec<(ResourceKey, Outcome)>,
    /// Services written, with what they held and hold, for the allocation index.
    service_changes: Vec<allocation::ServiceChange>,
}

/// Encodes every resource of `input`, as admission changed it (`admitted`), with
/// [`encode_run`]; a large apply in chunks, the first on this thread and the others on scoped
/// threads, joined in input order. Each chunk stops at its first error, and the error returned
/// is that of the earliest failing chunk: the one a single pass reports.
fn encode_all(
    cx: &EncodeContext<'_>,
    input: &[Resource],
    mut admitted: admission::Admitted,
    mut skeys: Vec<String>,
    threads: usize,
) -> Result<Encoded> {
    if input.len() < PARALLEL_ENCODE_MIN || threads < 2 {
        return encode_run(cx, input, 0, admitted, skeys);
    }
    let chunk = input.len().div_ceil(threads);
    // Chunks split off the end: their first index, admission's copies in them, their keys.
    let mut rest = Vec::new();
    while skeys.len() > chunk {
        let at = (skeys.len() - 1) / chunk * chunk;
        rest.push((at, admitted.split_off(&at), skeys.split_off(at)));
    }
    rest.reverse();
    let (first, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .into_iter()
            .map(|(at, adm, ks)| {
                let part = &input[at..at + ks.len()];
                scope.spawn(move || encode_run(cx, part, at, adm, ks))
            })
            .collect();
        let first = encode_run(cx, &input[..skeys.len()], 0, admitted, skeys);
        let results: Vec<Result<Encoded>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        (first, results)
    });
    let mut all = first?;
    for result in results {
        let mut part = result?;
        all.ops.append(&mut part.ops);
        all.outcomes.append(&mut part.outcomes);
        all.service_changes.append(&mut part.service_changes);
    }
    Ok(all)
}

/// Encodes `input` (the resources from index `base` of the apply, index-aligned with their
/// store keys `skeys`, which move into the writes), each as admission changed it when it did
/// (`admitted`, by index of the apply): an existing one is checked against its stored version
/// (create mode, a resourceVersion precondition), keeps its uid, creation time and status, and
/// is written only when its JSON differs; a new one gets a uid and creation time, written from
/// the resource itself ([`encode_created`]) without copying it.
fn encode_run(
    cx: &EncodeContext<'_>,
    input: &[Resource],
    base: usize,
    admitted: admission::Admitted,
    skeys: Vec<String>,
) -> Result<Encoded> {
    let mut out = Encoded {
        ops: Vec::with_capacity(input.len() + 1),
        outcomes: Vec::with_capacity(input.len()),
        service_changes: Vec::new(),
    };
    let mut admitted = admitted.into_iter().peekable();
    // One serialization buffer for every value; each value is then copied out at its size.
    let mut buf = Vec::with_capacity(4096);
    let mut old_buf = Vec::new();
    for (i, (given, skey)) in input.iter().zip(skeys).enumerate() {
        let changed = admitted.next_if(|(at, _)| *at == base + i).map(|(_, r)| r);
        let r = changed.as_ref().unwrap_or(given);
        match cx.existing.get(&skey) {
            Some((old, rev)) => {
                if cx.mode == ApplyMode::Create {
                    return Err(ApiError::AlreadyExists { key: r.key() });
                }
                // A resourceVersion in the input is a precondition, as in Kubernetes.
                let expected = match &r.meta().resource_version {
                    Some(v) => v
                        .parse::<Revision>()
                        .map_err(|_| ApiError::BadResourceVersion {
                            key: r.key(),
                            value: v.clone(),
                        })?,
                    None => *rev,
                };
                if expected != *rev {
                    return Err(ApiError::Store(StoreError::Conflict {
                        key: skey,
                        expected,
                        actual: *rev,
                    }));
                }
                let mut r = changed.unwrap_or_else(|| given.clone());
                let r = &mut r;
                let meta = r.meta_mut();
                meta.uid = old.meta().uid.clone();
                meta.creation_timestamp = old.meta().creation_timestamp.clone();
                meta.resource_version = None;
                keep_status(r, old);
                // Unchanged when the JSON it would store is the stored one's (both without
                // resourceVersion).
                let value = encode_into(r, &mut buf);
                serialize_into(old, &mut old_buf);
                if value == old_buf {
                    out.outcomes.push((take_key(r), Outcome::Unchanged));
                    continue;
                }
                if let (Resource::Service(new), Resource::Service(old)) = (&*r, old) {
                    out.service_changes.push((
                        skey.clone(),
                        allocation::held(old),
                        allocation::held(new),
                    ));
                }
                out.ops.push(TxnOp::Update {
                    key: skey,
                    value,
                    expected,
                });
                out.outcomes.push((take_key(r), Outcome::Configured));
            }
            None => {
                if let Resource::Service(new) = r {
                    out.service_changes.push((
                        skey.clone(),
                        allocation::Held::default(),
                        allocation::held(new),
                    ));
                }
                let uid = new_uid(&skey, cx.now, cx.pid);
                let (value, key) = match encode_created(r, &uid, cx.now, &mut buf) {
                    Some(value) => (value, r.key()),
                    None => {
                        let mut r = changed.unwrap_or_else(|| given.clone());
                        let meta = r.meta_mut();
                        meta.resource_version = None;
                        meta.uid = Some(uid);
                        meta.creation_timestamp = Some(cx.now.to_string());
                        (encode_into(&r, &mut buf), take_key(&mut r))
                    }
                };
                out.ops.push(TxnOp::Create { key: skey, value });
                out.outcomes.push((key, Outcome::Created));
            }
        }
    }
    Ok(out)
}

/// The stored JSON of `r` created now, with `uid` and the creation time `now`, written from `r`
/// itself rather than from a copy given them: `r`'s own JSON with the two appended to its
/// metadata, where serializing such a copy writes them (they are the last fields of
/// [`serval_model::ObjectMeta`]; the copy's resourceVersion is none). `None` when `r` has a
/// resourceVersion, uid or creation time of its own, or its JSON does not open with its
/// envelope and metadata: then the caller encodes a copy.
fn encode_created(r: &Resource, uid: &str, now: &str, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    // Every field named: a field added to the metadata is a decision to make here.
    let serval_model::ObjectMeta {
        name: _,
        namespace: _,
        labels: _,
        annotations: _,
        resource_version,
        uid: own_uid,
        creation_timestamp,
    } = r.meta();
    if resource_version.is_some() || own_uid.is_some() || creation_timestamp.is_some() {
        return None;
    }
    serialize_into(r, buf);
    let kind = r.kind();
    // `{"apiVersion":"v1","kind":"Service","metadata":{"` (metadata always has its name).
    let head: [&[u8]; 5] = [
        b"{\"apiVersion\":\"",
        kind.api_version().as_bytes(),
        b"\",\"kind\":\"",
        kind.name().as_bytes(),
        b"\",\"metadata\":{\"",
    ];
    let mut at = 0;
    for part in head {
        if !buf[at..].starts_with(part) {
            return None;
        }
        at += part.len();
    }
    let end = json_object_end(buf, at - 2)?;
    let mut out = Vec::with_capacity(buf.len() + uid.len() + now.len() + 40);
    out.extend_from_slice(&buf[..end]);
    out.extend_from_slice(b",\"uid\":");
    serde_json::to_writer(&mut out, uid).expect("a string always serializes");
    out.extend_from_slice(b",\"creationTimestamp\":");
    serde_json::to_writer(&mut out, now).expect("a string always serializes");
    out.extend_from_slice(&buf[end..]);
    Some(out)
}

/// The index of the `}` that closes the JSON object opening at `json[open]` (serde_json's
/// compact output: strings are the only place a brace or bracket is not structure).
fn json_object_end(json: &[u8], open: usize) -> Option<usize> {
    if json.get(open) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate().skip(open) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Milliseconds, for the timing logs.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Typed resource events, in revision order.
#[derive(Debug)]
pub struct ResourceWatch {
    inner: serval_store::Watch,
}

impl ResourceWatch {
    /// The next change and its revision; `None` when the watch ended. An
    /// `Err(ApiError::Store(StoreError::Compacted{..}))` means: list again and resync.
    pub async fn next(&mut self) -> Option<Result<(ResourceEvent, Revision)>> {
        let ev = match self.inner.next().await? {
            Ok(ev) => ev,
            Err(e) => return Some(Err(e.into())),
        };
        Some(decode_event(&ev))
    }
}

/// Runs `attempt` again while its transaction loses a race with a concurrent writer (a
/// compare-and-swap conflict or a create that someone else made first), up to
/// [`MAX_APPLY_ATTEMPTS`] times, with a short, growing, per-process-varied pause that spreads
/// concurrent writers. `what` names the operation in the debug log.
async fn retry_raced<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(ApiError::Store(StoreError::TxnFailed { source, .. }))
                if matches!(
                    *source,
                    StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }
                ) && n < MAX_APPLY_ATTEMPTS =>
            {
                tracing::debug!(attempt = n, "{what} raced a concurrent writer; retrying");
                let jitter = u64::from(std::process::id() % 7) + u64::from(n) * 3;
                tokio::time::sleep(std::time::Duration::from_millis(jitter.min(50))).await;
            }
            other => return other,
        }
    }
}

/// One store watch event as a typed resource change: a put decodes the value; a delete names
/// the key (from the store key, else from the previous value) and carries the previous value
/// when the store kept it. What [`ResourceWatch::next`] gives; public for consumers that
/// read the store's watch themselves (the agent's syncer decodes queued events in batches).
pub fn decode_event(ev: &serval_store::WatchEvent) -> Result<(ResourceEvent, Revision)> {
    let out = match ev.kind {
        EventKind::Put => decode(&ev.kv).map(ResourceEvent::Applied),
        EventKind::Delete => {
            let last = ev.prev.as_ref().map(decode).transpose();
            match (last, key_from_store_key(&ev.kv.key)) {
                (Ok(last), Some(key)) => Ok(ResourceEvent::Deleted { key, last }),
                (Ok(Some(last)), None) => Ok(ResourceEvent::Deleted {
                    key: last.key(),
                    last: Some(last),
                }),
                (Ok(None), None) => Err(ApiError::BadKey {
                    key: ev.kv.key.clone(),
                }),
                (Err(e), _) => Err(e),
            }
        }
    };
    out.map(|e| (e, ev.revision))
}

/// Decode a stored resource and stamp its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Resource> {
    let mut r = Resource::from_json(&kv.value).map_err(|source| ApiError::Corrupt {
        key: kv.key.clone(),
        reason: source.to_string(),
    })?;
    r.meta_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(r)
}

/// The resource key a datastore key names (inverse of [`ResourceKey::store_key`]).
pub fn key_from_store_key(skey: &str) -> Option<ResourceKey> {
    let rest = skey.strip_prefix(RESOURCE_PREFIX)?;
    let mut parts = rest.split('/');
    let plural = parts.next()?;
    let info = serval_model::kind::KINDS
        .iter()
        .find(|i| i.plural == plural)?;
    let (namespace, name) = if info.namespaced {
        (Some(parts.next()?.to_string()), parts.next()?.to_string())
    } else {
        (None, parts.next()?.to_string())
    };
    if parts.next().is_some() {
        return None;
    }
    Some(ResourceKey {
        kind: info.kind,
        namespace,
        name,
    })
}

/// Status is written by Serval's components (a pod's phase and IPs by its node's runtime), as
/// through Kubernetes' status subresource: an apply without a status keeps the stored one.
fn keep_status(new: &mut Resource, old: &Resource) {
    match (new, old) {
        (Resource::Pod(n), Resource::Pod(o)) if n.status.is_none() => n.status = o.status.clone(),
        (Resource::Service(n), Resource::Service(o)) if n.status.is_none() => {
            n.status = o.status.clone()
        }
        (Resource::Namespace(n), Resource::Namespace(o)) if n.status.is_none() => {
            n.status = o.status.clone()
        }
        _ => {}
    }
}

/// `r`'s key, its namespace and name moved out of it (for a resource about to be dropped).
fn take_key(r: &mut Resource) -> ResourceKey {
    let kind = r.kind();
    let meta = r.meta_mut();
    ResourceKey {
        kind,
        namespace: meta.namespace.take(),
        name: std::mem::take(&mut meta.name),
    }
}

/// A stable, unique-enough uid: a hash of the key and creation time (no RNG needed).
/// `pid` is [`std::process::id`], read once by the caller (it is a system call).
fn new_uid(key: &str, now: &str, pid: u32) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    now.hash(&mut h);
    pid.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    let b = h.finish();
    // The hex of `a` then `b`, grouped 8-4-4-4-12 as a UUID.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, nibble) in (0..32).enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let word = if nibble < 16 { a } else { b };
        let shift = 4 * (15 - nibble % 16);
        out.push(char::from(HEX[((word >> shift) & 0xf) as usize]));
    }
    out
}

/// A resource's store key ([`ResourceKey::store_key`]) without building its `ResourceKey`.
fn store_key_of(r: &Resource) -> String {
    let kind = r.kind();
    let meta = r.meta();
    let plural = kind.info().plural;
    let mut out = String::with_capacity(
        RESOURCE_PREFIX.len()
            + plural.len()
            + meta.name.len()
            + 2
            + meta.namespace.as_ref().map_or(0, String::len),
    );
    out.push_str(RESOURCE_PREFIX);
    out.push_str(plural);
    out.push('/');
    if kind.is_namespaced()
        && let Some(ns) = &meta.namespace
    {
        out.push_str(ns);
        out.push('/');
    }
    out.push_str(&meta.name);
    out
}

/// `r` as stored (the JSON of [`Resource::to_json`]), serialized into the reused `buf` and
/// copied out at its exact size.
fn encode_into(r: &Resource, buf: &mut Vec<u8>) -> Vec<u8> {
    serialize_into(r, buf);
    buf.as_slice().to_vec()
}

/// Replaces `buf`'s contents with `r`'s stored JSON.
fn serialize_into(r: &Resource, buf: &mut Vec<u8>) {
    buf.clear();
    serde_json::to_writer(&mut *buf, r).expect("resources always serialize to JSON");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_key_of_is_the_resource_keys_store_key() {
        let docs = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {ports: [{port: 80}]}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n";
        let mut resources = serval_model::parse_documents("t.yaml", docs).unwrap();
        assert_eq!(resources.len(), 4);
        let mut no_namespace = resources[1].clone();
        no_namespace.meta_mut().namespace = None;
        resources.push(no_namespace);
        for r in &resources {
            assert_eq!(store_key_of(r), r.key().store_key());
        }
    }

    /// `n` Services named `svc-0`.. in namespace `default`, as parsed from a file.
    fn services(n: usize) -> Vec<Resource> {
        let mut docs = String::new();
        for i in 0..n {
            docs.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports:\n    - port: 80\n",
                i / 250,
                i % 250 + 1
            ));
        }
        serval_model::parse_documents("t.yaml", &docs).unwrap()
    }

    /// Encodes `resources` on `threads` threads against `existing`.
    fn encode(
        resources: &[Resource],
        existing: &BTreeMap<String, (Resource, Revision)>,
        mode: ApplyMode,
        threads: usize,
    ) -> Result<Encoded> {
        let cx = EncodeContext {
            existing,
            mode,
            now: "2026-01-01T00:00:00Z",
            pid: 7,
        };
        let skeys = resources.iter().map(store_key_of).collect();
        encode_all(&cx, resources, admission::Admitted::new(), skeys, threads)
    }

    #[test]
    fn encoding_in_chunks_gives_what_one_pass_gives() {
        let n = PARALLEL_ENCODE_MIN + 1001;
        let resources = services(n);
        // Stored: one Service as it is applied (unchanged), one with another cluster IP (that of
        // svc-1: configured), each at its own revision.
        let mut existing = BTreeMap::new();
        let stored = encode(&resources[..2], &BTreeMap::new(), ApplyMode::Apply, 1).unwrap();
        for (i, op) in [(n - 7, &stored.ops[0]), (n / 2, &stored.ops[1])] {
            let TxnOp::Create { value, .. } = op else {
                panic!("{op:?} is not a create")
            };
            let mut old = Resource::from_json(value).unwrap();
            old.meta_mut().name = resources[i].meta().name.clone();
            let rev = i as Revision;
            if i == n - 7 {
                // As the working copy encodes it: the same uid and creation time.
                let mut r = resources[i].clone();
                let meta = r.meta_mut();
                meta.uid = old.meta().uid.clone();
                meta.creation_timestamp = old.meta().creation_timestamp.clone();
                old = r;
            }
            existing.insert(store_key_of(&resources[i]), (old, rev));
        }
        let one = encode(&resources, &existing, ApplyMode::Apply, 1).unwrap();
        for threads in [2, 3, 4] {
            assert_eq!(
                encode(&resources, &existing, ApplyMode::Apply, threads).unwrap(),
                one,
                "{threads} threads"
            );
        }
        assert_eq!(one.outcomes.len(), n);
        assert_eq!(one.ops.len(), n - 1);
        assert_eq!(one.service_changes.len(), n - 1);
        assert_eq!(one.outcomes[n - 7].1, Outcome::Unchanged);
        assert_eq!(one.outcomes[n / 2].1, Outcome::Configured);
        assert_eq!(one.outcomes[0].1, Outcome::Created);
        assert_eq!(one.outcomes[n - 1].0.name, format!("svc-{}", n - 1));
        assert!(matches!(
            &one.ops[n / 2],
            TxnOp::Update { expected, .. } if *expected == (n / 2) as Revision
        ));

        // The first error in input order, as one pass reports it, whichever chunk holds it:
        // create mode fails on the first existing resource (n / 2, before n - 7).
        let first = encode(&resources, &existing, ApplyMode::Create, 1).unwrap_err();
        assert!(
            first.to_string().contains(&format!("svc-{}", n / 2)),
            "{first}"
        );
        for threads in [2, 3, 4] {
            let e = encode(&resources, &existing, ApplyMode::Create, threads).unwrap_err();
            assert_eq!(e.to_string(), first.to_string(), "{threads} threads");
        }
        // A stale resourceVersion late in the input and an existing resource in create mode
        // earlier: apply mode reports the conflict, the only error it sees.
        let mut stale = resources.clone();
        stale[n - 3].meta_mut().resource_version = Some("1".into());
        existing.insert(
            store_key_of(&stale[n - 3]),
            (stale[n - 3].clone(), 2 as Revision),
        );
        let conflict = encode(&stale, &existing, ApplyMode::Apply, 1).unwrap_err();
        assert!(matches!(
            conflict,
            ApiError::Store(StoreError::Conflict { .. })
        ));
        for threads in [2, 3, 4] {
            let e = encode(&stale, &existing, ApplyMode::Apply, threads).unwrap_err();
            assert_eq!(e.to_string(), conflict.to_string(), "{threads} threads");
        }
    }

    #[test]
    fn admissions_copies_are_encoded_in_place_of_the_input_in_every_chunk() {
        let n = PARALLEL_ENCODE_MIN + 1001;
        let input = services(n);
        // Admission's copies: another cluster IP for a few Services across the chunks.
        let mut admitted = admission::Admitted::new();
        for i in [0, 1, n / 4, n / 3, n / 2, n / 2 + 1, n - 1] {
            let mut r = input[i].clone();
            let Resource::Service(s) = &mut r else {
                unreachable!()
            };
            let ip = format!("10.97.0.{}", i % 250 + 1);
            s.spec.cluster_ip = Some(ip.clone());
            s.spec.cluster_ips = vec![ip];
            admitted.insert(i, r);
        }
        // What encoding the input with the copies in place gives.
        let mut patched = input.clone();
        for (i, r) in &admitted {
            patched[*i] = r.clone();
        }
        let existing = BTreeMap::new();
        let want = encode(&patched, &existing, ApplyMode::Apply, 1).unwrap();
        assert_ne!(
            encode(&input, &existing, ApplyMode::Apply, 1).unwrap(),
            want,
            "the copies change what is stored"
        );
        let cx = EncodeContext {
            existing: &existing,
            mode: ApplyMode::Apply,
            now: "2026-01-01T00:00:00Z",
            pid: 7,
        };
        for threads in [1, 2, 3, 4] {
            let skeys = input.iter().map(store_key_of).collect();
            let got = encode_all(&cx, &input, admitted.clone(), skeys, threads).unwrap();
            assert_eq!(got, want, "{threads} threads");
        }
        let TxnOp::Create { value, .. } = &want.ops[n / 2] else {
            panic!("a create")
        };
        let stored = Resource::from_json(value).unwrap();
        assert_eq!(stored.meta().name, format!("svc-{}", n / 2));
        assert_eq!(
            allocation::held(match &stored {
                Resource::Service(s) => s,
                _ => unreachable!(),
            }),
            allocation::held(match &admitted[&(n / 2)] {
                Resource::Service(s) => s,
                _ => unreachable!(),
            })
        );
    }

    /// What encoding a created resource wrote before [`encode_created`]: a copy given the
    /// uid and creation time, serialized.
    fn created_by_copy(r: &Resource, uid: &str, now: &str) -> Vec<u8> {
        let mut r = r.clone();
        let meta = r.meta_mut();
        meta.resource_version = None;
        meta.uid = Some(uid.to_string());
        meta.creation_timestamp = Some(now.to_string());
        encode_into(&r, &mut Vec::new())
    }

    #[test]
    fn a_created_resource_is_written_from_itself_as_its_copy_would_be() {
        let docs = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: web
  labels: {app: web, example.com/tier: front}
  annotations:
    note: '{"k": [1, "}"], "q": "\\"}\\\\'
    z: "é]{"
    empty: ""
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: p, port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: web, labels: {app: web}, annotations: {a: "}"}}
spec:
  nodeName: node1
  containers: [{name: c}]
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.0.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: gnp}
spec: {selector: "all()", ingress: [{action: Allow}]}
"#;
        let resources = serval_model::parse_documents("t.yaml", docs).unwrap();
        assert_eq!(resources.len(), 5);
        let (uid, now) = (
            "0123abcd-0000-0000-0000-000000000000",
            "2026-01-01T00:00:00Z",
        );
        let mut buf = Vec::new();
        for r in &resources {
            let value = encode_created(r, uid, now, &mut buf).expect("written from itself");
            assert_eq!(
                String::from_utf8(value).unwrap(),
                String::from_utf8(created_by_copy(r, uid, now)).unwrap()
            );
        }
        // A resource with a uid, creation time or resourceVersion of its own is copied.
        for set in 0..3 {
            let mut r = resources[0].clone();
            let meta = r.meta_mut();
            let v = Some("1".to_string());
            match set {
                0 => meta.uid = v,
                1 => meta.creation_timestamp = v,
                _ => meta.resource_version = v,
            }
            assert_eq!(encode_created(&r, uid, now, &mut buf), None);
            let cx = EncodeContext {
                existing: &BTreeMap::new(),
                mode: ApplyMode::Apply,
                now,
                pid: 7,
            };
            let skeys = vec![store_key_of(&r)];
            let uid = new_uid(&skeys[0], now, 7);
            let encoded = encode_all(
                &cx,
                std::slice::from_ref(&r),
                admission::Admitted::new(),
                skeys,
                1,
            )
            .unwrap();
            assert!(matches!(
                &encoded.ops[0],
                TxnOp::Create { value, .. } if *value == created_by_copy(&r, &uid, now)
            ));
        }
    }

    #[test]
    fn uids_are_the_hex_of_two_hashes_grouped_as_a_uuid() {
        use std::hash::{Hash, Hasher};
        let (key, now) = (
            "/serval/resources/services/default/a",
            "2026-01-01T00:00:00Z",
        );
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        now.hash(&mut h);
        7u32.hash(&mut h);
        let a = h.finish();
        a.hash(&mut h);
        let b = h.finish();
        let x = format!("{a:016x}{b:016x}");
        let expected = format!(
            "{}-{}-{}-{}-{}",
            &x[0..8],
            &x[8..12],
            &x[12..16],
            &x[16..20],
            &x[20..32]
        );
        assert_eq!(new_uid(key, now, 7), expected);
        assert_ne!(
            new_uid("/serval/resources/services/default/b", now, 7),
            expected
        );
    }
}
