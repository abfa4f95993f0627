//! [`Model`]: an indexed snapshot of every resource the calculation reads, updated one
//! resource at a time.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use serval_model::calico::{
    FelixConfiguration, FelixConfigurationSpec, FelixSettings, GlobalNetworkPolicy, HostEndpoint,
    IPPool, NetworkPolicy, Node, Tier,
};
use serval_model::k8s::{
    EndpointSlice, K8sNetworkPolicy, Namespace, Pod, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Kind, ObjectMeta, Resource, ResourceKey};

mod compact;

pub use compact::K8sPolicyEntry;

/// `(namespace, name)` of a namespaced resource.
pub type NsName = (String, String);

/// The label every namespace carries automatically (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which index of the [`Model`] a change touched, so a caller can tell what may need
/// recomputing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Index {
    Namespaces,
    Pods,
    WorkloadEndpoints,
    Services,
    EndpointSlices,
    K8sPolicies,
    Policies,
    GlobalPolicies,
    Tiers,
    HostEndpoints,
    IpPools,
    Nodes,
    FelixConfigurations,
    /// Kinds the calculation does not read (BGPConfiguration, BGPPeer).
    Ignored,
}

/// Every resource the calculation needs, indexed by key. Build with
/// [`Model::from_resources`]; keep up to date with [`Model::apply`] and [`Model::remove`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<NsName, Pod>,
    pub workload_endpoints: BTreeMap<NsName, WorkloadEndpoint>,
    /// Services in the compact form the model keeps ([`ServiceEntry::to_service`] gives the
    /// resource back).
    pub services: BTreeMap<NsName, ServiceEntry>,
    pub endpoint_slices: BTreeMap<NsName, EndpointSlice>,
    /// Kubernetes NetworkPolicies in the compact form the model keeps
    /// ([`K8sPolicyEntry::to_policy`] gives the resource back).
    pub k8s_policies: BTreeMap<NsName, K8sPolicyEntry>,
    pub policies: BTreeMap<NsName, NetworkPolicy>,
    pub global_policies: BTreeMap<String, GlobalNetworkPolicy>,
    /// Stored tiers; the `default` tier is implied (see [`Model::tiers`]).
    pub tiers: BTreeMap<String, Tier>,
    pub host_endpoints: BTreeMap<String, HostEndpoint>,
    pub ip_pools: BTreeMap<String, IPPool>,
    pub nodes: BTreeMap<String, Node>,
    /// By name: `default` and `node.<name>`.
    pub felix_configurations: BTreeMap<String, FelixConfiguration>,
    /// IPAM blocks by their affine node's name (block affinities, not resources: the agent
    /// sets them; [`Model::from_resources`] leaves them empty).
    pub ipam_blocks: BTreeMap<ipnet::IpNet, String>,
    /// The selector and ports of the Service applied last, shared by the next one when equal.
    shared: ServiceShare,
}

/// A label selector as sorted `(key, value)` pairs, shareable between entries.
type SharedLabels = Arc<[(Box<str>, Box<str>)]>;

/// The last selector and port list a [`ServiceEntry`] was made with: Services applied in a
/// burst often repeat them (every Service of a Deployment's set, the bench's 50,000), and an
/// equal one is shared instead of allocated again. Not part of the model's value (equal
/// models compare equal whatever they shared).
#[derive(Debug, Clone, Default)]
struct ServiceShare {
    selector: Option<SharedLabels>,
    ports: Option<Arc<[ServicePort]>>,
}

impl PartialEq for ServiceShare {
    fn eq(&self, _: &ServiceShare) -> bool {
        true
    }
}

/// `value`, or the shared copy in `slot` when equal (which then holds `value`'s copy if not).
fn shared<T: ?Sized + PartialEq>(slot: &mut Option<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match slot {
        Some(s) if **s == *value => s.clone(),
        _ => {
            *slot = Some(value.clone());
            value
        }
    }
}

/// A Service as the [`Model`] keeps it: the resource without the parts every Service of a
/// large cluster repeats in its own allocations. Its key (namespace and name) is not stored
/// again, metadata only when it holds more than the key, and the selector as a sorted slice
/// instead of a `BTreeMap` (whose smallest node takes over 500 bytes for one label). At
/// 50,000 Services that is about 1 KB less per Service. [`ServiceEntry::to_service`] gives
/// back exactly the Service it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    /// The spec (its selector moved to `selector`) and the status.
    body: Box<(ServiceSpec, Option<ServiceStatus>)>,
    /// `spec.selector`, sorted by key (shared with other entries when equal).
    selector: SharedLabels,
    /// `spec.ports` (shared with other entries when equal).
    ports: Arc<[ServicePort]>,
    /// The metadata, unless it is exactly the key (`namespace` set, nothing else).
    meta: Option<Box<ObjectMeta>>,
    /// `spec.clusterIPs` was `[spec.clusterIP]` (as admission stores a single-stack
    /// Service) and is kept empty in `body`.
    cluster_ips_is_cluster_ip: bool,
}

impl ServiceEntry {
    /// The entry for `svc`, stored under `(namespace, name)` = `(svc.metadata.namespace_str(),
    /// svc.metadata.name)`.
    pub fn new(svc: Service) -> ServiceEntry {
        ServiceEntry::sharing(svc, &mut ServiceShare::default())
    }

    /// [`ServiceEntry::new`], sharing the selector and ports of `share` when equal.
    fn sharing(mut svc: Service, share: &mut ServiceShare) -> ServiceEntry {
        // Compared with the shared copies before anything is allocated for them.
        let selector = std::mem::take(&mut svc.spec.selector);
        let selector = match &share.selector {
            Some(s)
                if s.len() == selector.len()
                    && s.iter()
                        .zip(&selector)
                        .all(|((a, b), (k, v))| **a == **k && **b == **v) =>
            {
                s.clone()
            }
            _ => shared(
                &mut share.selector,
                SharedLabels::from(compact::labels_from(selector)),
            ),
        };
        let ports = std::mem::take(&mut svc.spec.ports);
        let ports = match &share.ports {
            Some(p) if **p == *ports => p.clone(),
            _ => shared(&mut share.ports, ports.into()),
        };
        let spec = &mut svc.spec;
        let cluster_ips_is_cluster_ip =
            spec.cluster_ips.len() == 1 && spec.cluster_ip.as_ref() == spec.cluster_ips.first();
        if cluster_ips_is_cluster_ip {
            spec.cluster_ips = Vec::new();
        }
        // Kept as long as the Service: without the spare capacity a decoded list may have.
        spec.cluster_ips.shrink_to_fit();
        spec.ip_families.shrink_to_fit();
        spec.external_ips.shrink_to_fit();
        ServiceEntry {
            meta: compact::meta_beyond_key(svc.metadata),
            body: Box::new((svc.spec, svc.status)),
            selector,
            ports,
            cluster_ips_is_cluster_ip,
        }
    }

    /// The Service this entry was made from; `namespace` and `name` are its key in
    /// [`Model::services`].
    pub fn to_service(&self, namespace: &str, name: &str) -> Service {
        let (spec, status) = &*self.body;
        let mut spec = spec.clone();
        spec.selector = compact::labels_to(&self.selector);
        spec.ports = self.ports.to_vec();
        if self.cluster_ips_is_cluster_ip {
            spec.cluster_ips = spec.cluster_ip.iter().cloned().collect();
        }
        Service {
            metadata: compact::meta_of(&self.meta, namespace, name),
            spec,
            status: status.clone(),
        }
    }

    /// What the Service's frontends read of it, borrowed (no copy of the Service).
    pub(crate) fn view(&self) -> crate::services::ServiceView<'_> {
        use crate::services::{Selector, ServiceView};
        let (spec, status) = &*self.body;
        ServiceView {
            spec,
            cluster_ips: match &spec.cluster_ip {
                Some(ip) if self.cluster_ips_is_cluster_ip => std::slice::from_ref(ip),
                _ => &spec.cluster_ips,
            },
            selector: Selector::Sorted(&self.selector),
            ports: &self.ports,
            status: status.as_ref(),
            wants_maglev: self
                .meta
                .as_ref()
                .is_some_and(|m| crate::maglev::annotation_wants_maglev(&m.annotations)),
        }
    }

    /// Whether the Service has a selector (an empty one: no automatic endpoints).
    pub fn has_selector(&self) -> bool {
        !self.selector.is_empty()
    }

    /// Whether the selector matches `labels`: every key present with an equal value (true
    /// for an empty selector).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.get(&**k).is_some_and(|l| **l == **v))
    }

    /// `spec.has_node_ports()` of the Service.
    pub fn has_node_ports(&self) -> bool {
        self.body.0.has_node_ports()
    }
}

fn ns_name(r: &Resource) -> NsName {
    let m = r.meta();
    (m.namespace_str().to_string(), m.name.clone())
}

/// Inserts `v` under `k`; `Some(index)` when the map changed.
fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, k: K, v: V, idx: Index) -> Option<Index> {
    // One search of the map, not a lookup and then an insert.
    match map.entry(k) {
        Entry::Occupied(old) if *old.get() == v => None,
        Entry::Occupied(mut old) => {
            old.insert(v);
            Some(idx)
        }
        Entry::Vacant(slot) => {
            slot.insert(v);
            Some(idx)
        }
    }
}

fn take<K: Ord, V>(map: &mut BTreeMap<K, V>, k: &K, idx: Index) -> Option<Index> {
    map.remove(k).map(|_| idx)
}

impl Model {
    /// A model holding `resources` (later duplicates of a key replace earlier ones).
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> Model {
        let mut m = Model::default();
        for r in resources {
            m.apply(r);
        }
        m
    }

    /// Adds or replaces one resource. Returns the index that changed, or `None` when the
    /// resource was already present unchanged (or is of a kind the calculation ignores).
    pub fn apply(&mut self, r: Resource) -> Option<Index> {
        let key = ns_name(&r);
        // A copy of the key for the trace below only when that is logged (a burst of
        // 50,000 Services would copy 100,000 strings for nothing).
        let log_key = tracing::enabled!(tracing::Level::TRACE).then(|| key.clone());
        let changed = match r {
            Resource::Namespace(v) => put(&mut self.namespaces, key.1, v, Index::Namespaces),
            Resource::Pod(v) => put(&mut self.pods, key, v, Index::Pods),
            Resource::WorkloadEndpoint(v) => put(
                &mut self.workload_endpoints,
                key,
                v,
                Index::WorkloadEndpoints,
            ),
            Resource::Service(v) => put(
                &mut self.services,
                key,
                ServiceEntry::sharing(v, &mut self.shared),
                Index::Services,
            ),
            Resource::EndpointSlice(v) => {
                put(&mut self.endpoint_slices, key, v, Index::EndpointSlices)
            }
            Resource::K8sNetworkPolicy(v) => put(
                &mut self.k8s_policies,
                key,
                K8sPolicyEntry::new(v),
                Index::K8sPolicies,
            ),
            Resource::NetworkPolicy(v) => put(&mut self.policies, key, v, Index::Policies),
            Resource::GlobalNetworkPolicy(v) => {
                put(&mut self.global_policies, key.1, v, Index::GlobalPolicies)
            }
            Resource::Tier(v) => put(&mut self.tiers, key.1, v, Index::Tiers),
            Resource::HostEndpoint(v) => {
                put(&mut self.host_endpoints, key.1, v, Index::HostEndpoints)
            }
            Resource::IPPool(v) => put(&mut self.ip_pools, key.1, v, Index::IpPools),
            Resource::Node(v) => put(&mut self.nodes, key.1, v, Index::Nodes),
            Resource::FelixConfiguration(v) => put(
                &mut self.felix_configurations,
                key.1,
                v,
                Index::FelixConfigurations,
            ),
            Resource::BGPConfiguration(_) | Resource::BGPPeer(_) => None,
        };
        if let (Some(idx), Some((log_ns, log_name))) = (changed, log_key) {
            tracing::trace!(index = ?idx, namespace = %log_ns, name = %log_name, "model: applied");
        }
        changed
    }

    /// Removes one resource. Returns the index that changed, or `None` when it was absent.
    pub fn remove(&mut self, key: &ResourceKey) -> Option<Index> {
        let nn = (key.namespace.clone().unwrap_or_default(), key.name.clone());
        let name = &key.name;
        match key.kind {
            Kind::Namespace => take(&mut self.namespaces, name, Index::Namespaces),
            Kind::Pod => take(&mut self.pods, &nn, Index::Pods),
            Kind::WorkloadEndpoint => {
                take(&mut self.workload_endpoints, &nn, Index::WorkloadEndpoints)
            }
            Kind::Service => take(&mut self.services, &nn, Index::Services),
            Kind::EndpointSlice => take(&mut self.endpoint_slices, &nn, Index::EndpointSlices),
            Kind::K8sNetworkPolicy => take(&mut self.k8s_policies, &nn, Index::K8sPolicies),
            Kind::NetworkPolicy => take(&mut self.policies, &nn, Index::Policies),
            Kind::GlobalNetworkPolicy => {
                take(&mut self.global_policies, name, Index::GlobalPolicies)
            }
            Kind::Tier => take(&mut self.tiers, name, Index::Tiers),
            Kind::HostEndpoint => take(&mut self.host_endpoints, name, Index::HostEndpoints),
            Kind::IPPool => take(&mut self.ip_pools, name, Index::IpPools),
            Kind::Node => take(&mut self.nodes, name, Index::Nodes),
            Kind::FelixConfiguration => take(
                &mut self.felix_configurations,
                name,
                Index::FelixConfigurations,
            ),
            Kind::BGPConfiguration | Kind::BGPPeer => None,
        }
    }

    /// The Service `namespace/name`, as it was applied.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.to_service(namespace, name))
    }

    /// The Kubernetes NetworkPolicy `namespace/name`, as it was applied.
    pub fn k8s_policy(&self, namespace: &str, name: &str) -> Option<K8sNetworkPolicy> {
        self.k8s_policies
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.to_policy(namespace, name))
    }

    /// A namespace's labels, including the automatic `kubernetes.io/metadata.name`. A
    /// namespace without a stored resource has only that label.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .map(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
        labels
    }

    /// Every tier, the `default` tier included, sorted in evaluation order (order, then name;
    /// a tier without order comes last, as in Calico).
    pub fn tiers(&self) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = self.tiers.values().cloned().collect();
        if !self.tiers.contains_key(serval_model::calico::DEFAULT_TIER) {
            tiers.push(Tier::default_tier());
        }
        tiers.sort_by(|a, b| {
            let oa = a.spec.order.unwrap_or(f64::INFINITY);
            let ob = b.spec.order.unwrap_or(f64::INFINITY);
            oa.total_cmp(&ob)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        tiers
    }

    /// The effective Felix settings for `node` (or the cluster-wide `default` when `None`):
    /// Calico's defaults, overlaid by `default`, overlaid by `node.<name>`.
    pub fn felix(&self, node: Option<&str>) -> FelixSettings {
        let mut spec = FelixConfigurationSpec::default();
        if let Some(d) = self.felix_configurations.get("default") {
            spec = spec.overlay(&d.spec);
        }
        if let Some(n) = node
            && let Some(c) = self.felix_configurations.get(&format!("node.{n}"))
        {
            spec = spec.overlay(&c.spec);
        }
        spec.effective()
    }
}

#[cfg(test)]
mod tests {
    use serval_model::ObjectMeta;

    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> Resource {
        let mut n = Namespace::new(name);
        n.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Resource::Namespace(n)
    }

    #[test]
    fn apply_reports_changes_only() {
        let mut m = Model::default();
        assert_eq!(m.apply(ns("x", &[("ns", "x")])), Some(Index::Namespaces));
        assert_eq!(m.apply(ns("x", &[("ns", "x")])), None);
        assert_eq!(m.apply(ns("x", &[("ns", "y")])), Some(Index::Namespaces));
        let key = ResourceKey::new(Kind::Namespace, None, "x");
        assert_eq!(m.remove(&key), Some(Index::Namespaces));
        assert_eq!(m.remove(&key), None);
    }

    #[test]
    fn namespace_labels_include_the_automatic_name() {
        let mut m = Model::default();
        m.apply(ns("x", &[("ns", "x")]));
        let l = m.namespace_labels("x");
        assert_eq!(l.get("ns").map(String::as_str), Some("x"));
        assert_eq!(l.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("x"));
        assert_eq!(m.namespace_labels("nope").len(), 1);
    }

    fn service(yaml: &str) -> Service {
        match serval_model::parse_documents("svc", yaml)
            .expect("yaml")
            .remove(0)
        {
            Resource::Service(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn body_ips(e: &ServiceEntry) -> &[String] {
        &e.body.0.cluster_ips
    }

    #[test]
    fn service_entries_give_back_the_service() {
        let plain = service(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  \
             clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10]\n  selector: {app: web, tier: front}\n  \
             ports: [{name: http, port: 80, targetPort: 8080}]\n",
        );
        let full = service(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\n  namespace: y\n  \
             labels: {a: b}\n  annotations: {c: d}\n  uid: u-1\n  resourceVersion: \"7\"\n\
             spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.11\n  \
             clusterIPs: [10.96.0.11, fd00::11]\n  ports: [{port: 443}]\n\
             status: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}\n",
        );
        let mut m = Model::default();
        for s in [&plain, &full] {
            m.apply(Resource::Service(s.clone()));
        }
        assert_eq!(m.service("x", "web").as_ref(), Some(&plain));
        assert_eq!(m.service("y", "lb").as_ref(), Some(&full));
        assert_eq!(m.service("x", "lb"), None);
        // Only metadata beyond the key is stored.
        let web = &m.services[&("x".to_string(), "web".to_string())];
        assert!(web.meta.is_none());
        assert!(web.cluster_ips_is_cluster_ip);
        assert!(body_ips(web).is_empty());
        let lb = &m.services[&("y".to_string(), "lb".to_string())];
        assert!(!lb.cluster_ips_is_cluster_ip);
        assert_eq!(body_ips(lb).len(), 2);
        assert!(
            m.services[&("y".to_string(), "lb".to_string())]
                .meta
                .is_some()
        );
        // The selector as build::selects reads it.
        assert!(web.has_selector());
        let labels = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(web.selects(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!web.selects(&labels(&[("app", "web")])));
        assert!(!web.selects(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!m.services[&("y".to_string(), "lb".to_string())].has_selector());
        assert!(m.services[&("y".to_string(), "lb".to_string())].has_node_ports());
        assert!(!web.has_node_ports());
        // A Service with the same selector and ports as the one applied before shares them.
        let twin = |n: u8| {
            let mut t = plain.clone();
            t.metadata.name = format!("web{n}");
            t.spec.cluster_ip = Some(format!("10.96.0.{n}"));
            t.spec.cluster_ips = vec![format!("10.96.0.{n}")];
            t
        };
        m.apply(Resource::Service(twin(2)));
        m.apply(Resource::Service(twin(3)));
        let web2 = &m.services[&("x".to_string(), "web2".to_string())];
        let web3 = &m.services[&("x".to_string(), "web3".to_string())];
        assert!(Arc::ptr_eq(&web2.selector, &web3.selector));
        assert!(Arc::ptr_eq(&web2.ports, &web3.ports));
        assert_eq!(m.service("x", "web2"), Some(twin(2)));
        assert_eq!(m.service("x", "web3"), Some(twin(3)));
        assert_eq!(m.service("x", "web").as_ref(), Some(&plain));
        // Re-applying an equal Service is no change; another selector is.
        assert_eq!(m.apply(Resource::Service(plain.clone())), None);
        let mut other = plain.clone();
        other.spec.selector.insert("tier".into(), "back".into());
        assert_eq!(m.apply(Resource::Service(other)), Some(Index::Services));
    }

    #[test]
    fn k8s_policy_entries_give_back_the_policy() {
        let docs = serval_model::parse_documents(
            "pol",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n\
             spec:\n  podSelector: {matchLabels: {app: web, tier: front}}\n  \
             policyTypes: [Ingress, Egress]\n  ingress:\n    - from:\n        - podSelector: \
             {matchLabels: {role: client}, matchExpressions: [{key: env, operator: In, values: [prod]}]}\n          \
             namespaceSelector: {matchLabels: {team: a}}\n        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n      \
             ports: [{protocol: TCP, port: 80}, {port: 8000, endPort: 8080}]\n    - {}\n  \
             egress: [{to: [{namespaceSelector: {}}], ports: [{protocol: UDP, port: dns}]}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: b\n  \
             namespace: y\n  labels: {l: v}\nspec: {podSelector: {}}\n",
        )
        .expect("yaml");
        let policies: Vec<K8sNetworkPolicy> = docs
            .into_iter()
            .map(|r| match r {
                Resource::K8sNetworkPolicy(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut m = Model::default();
        for p in &policies {
            assert_eq!(
                m.apply(Resource::K8sNetworkPolicy(p.clone())),
                Some(Index::K8sPolicies)
            );
        }
        assert_eq!(m.k8s_policy("x", "a").as_ref(), Some(&policies[0]));
        assert_eq!(m.k8s_policy("y", "b").as_ref(), Some(&policies[1]));
        assert_eq!(m.k8s_policy("x", "b"), None);
        // Equal again is no change; a changed peer selector is.
        assert_eq!(
            m.apply(Resource::K8sNetworkPolicy(policies[0].clone())),
            None
        );
        let mut changed = policies[0].clone();
        changed.spec.ingress[0].from[0]
            .pod_selector
            .as_mut()
            .expect("selector")
            .match_labels
            .insert("role".into(), "other".into());
        assert_eq!(
            m.apply(Resource::K8sNetworkPolicy(changed.clone())),
            Some(Index::K8sPolicies)
        );
        assert_eq!(m.k8s_policy("x", "a"), Some(changed));
    }

    #[test]
    fn default_tier_is_always_present_and_last() {
        let mut m = Model::default();
        assert_eq!(m.tiers().len(), 1);
        let mut t = Tier {
            metadata: ObjectMeta::named("security"),
            ..Default::default()
        };
        t.spec.order = Some(100.0);
        m.apply(Resource::Tier(t));
        let names: Vec<String> = m.tiers().into_iter().map(|t| t.metadata.name).collect();
        assert_eq!(names, ["security", "default"]);
    }
}
