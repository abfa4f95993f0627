//! The services-only write: the driver's cost for a batch that changes only services is
//! proportional to the frontends that changed, with no per-write work proportional to
//! anything else (no policy compile, no host interface or address reads, no rebuild and
//! diff of the endpoint, policy and route maps, no attachment scan).
//!
//! It applies when the caller named the frontends that changed
//! ([`super::super::Dataplane::apply_services_changed`]), everything but the services part
//! of the desired state equals what the last successful write wrote (compared field by field;
//! a new field of [`DesiredState`] fails to compile here until it is compared), the driver
//! holds the kernel's contents and a valid [`ServiceMirror`](super::incremental::ServiceMirror),
//! and no Maglev frontend is involved. Anything else takes the full write of
//! [`super::BpfDriver::write`].
//!
//! The writes keep the full path's order, so a failed write leaves the previous services in
//! force as far as the programs can see: backends (upserts, batched) before the frontends
//! that count them, frontend deletes before the deletes of their backends. After a failure
//! the kernel's contents are unknown: the driver forgets them and its mirror, and the next
//! write reads the maps back and takes the full path (a resync before it writes the service
//! maps this write meant to leave).
//!
//! What is not re-read here: the host's interfaces and addresses ([`super::HostView`]).
//! They change with endpoints or nodes, which are not services-only changes, and the
//! periodic resync repairs any drift.

use std::collections::HashSet;

use serval_calc::DesiredState;
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{NatAffKey, NatAffVal, NatBeKey};

use super::incremental::{ServiceDelta, check_service_capacity};
use super::{BpfDriver, BpfError, bpf_err, maps_err};
use crate::dataplane::{DataplaneError, Written};

/// Whether `a` and `b` are equal but for their services.
pub(super) fn same_but_services(a: &DesiredState, b: &DesiredState) -> bool {
    let DesiredState {
        node,
        endpoints,
        ipsets,
        services: _,
        nat_outgoing,
        host_endpoints,
        failsafe,
        endpoint_to_host,
        xdp,
        remote_blocks,
    } = a;
    *node == b.node
        && *endpoint_to_host == b.endpoint_to_host
        && *nat_outgoing == b.nat_outgoing
        && *failsafe == b.failsafe
        && *xdp == b.xdp
        && *remote_blocks == b.remote_blocks
        && *host_endpoints == b.host_endpoints
        && *endpoints == b.endpoints
        && *ipsets == b.ipsets
}

impl BpfDriver {
    /// The services-only write of `state` (see the module docs); `None` when it does not
    /// apply (nothing was changed, not even the mirror) and the full write must run.
    pub(super) fn write_services_only(
        &mut self,
        state: &DesiredState,
    ) -> Option<Result<Written, DataplaneError>> {
        let hint = self.services_hint.as_deref()?;
        if !same_but_services(self.last.as_ref()?, state) {
            return None;
        }
        let kernel = self.kernel.as_mut()?;
        if !kernel.maglev.is_empty() {
            return None;
        }
        let dp = self.dp.as_mut()?;
        let mirror = self.services.as_mut()?;
        let (d, pending) = mirror.update(
            state,
            Some(hint),
            &mut kernel.frontends,
            &mut kernel.backends,
        )?;
        let result = check_service_capacity(kernel, &d, &self.settings.sizes)
            .map_err(bpf_err)
            .and_then(|()| write_delta(dp, &self.pins, &kernel.backends, &d));
        Some(match result {
            Ok(w) => {
                mirror.commit(pending);
                Ok(w)
            }
            Err(e) => {
                // Unknown what the kernel holds now: read it back next time (a resync before
                // that writes what this write meant to).
                self.services_for_resync = self
                    .kernel
                    .take()
                    .map(|mut k| super::ServiceMaps::take_from(&mut k));
                mirror.invalidate();
                Err(e)
            }
        })
    }
}

/// Writes `d` in the full path's order; `backends` is `sv_nat_be` as it will be after.
fn write_delta(
    dp: &mut serval_dp_bpf::Dataplane,
    pins: &PinScope,
    backends: &super::BeMap,
    d: &ServiceDelta,
) -> Result<Written, DataplaneError> {
    let mut m = dp.maps();
    m.set_backends(&d.be_up).map_err(maps_err)?;
    m.set_frontends(&d.fe_up).map_err(maps_err)?;
    m.remove_frontends(&d.fe_del).map_err(maps_err)?;
    m.remove_backends(&d.be_del).map_err(maps_err)?;
    // Affinity entries can only go stale for the services whose backends changed.
    let touched: HashSet<u32> = d
        .be_up
        .iter()
        .map(|(k, _)| k.svc_id)
        .chain(d.be_del.iter().map(|k| k.svc_id))
        .collect();
    if !touched.is_empty() {
        let n = clean_affinity_of(pins, backends, &touched).map_err(bpf_err)?;
        if n > 0 {
            tracing::debug!(entries = n, "removed affinity entries of deleted backends");
        }
    }
    Ok(Written {
        members_changed: d.be_up.len() + d.be_del.len() + d.fe_up.len() + d.fe_del.len(),
        sets_changed: d.fe_up.len() + d.fe_del.len(),
        ..Written::default()
    })
}

/// Deletes the `sv_nat_aff` entries of services `touched` whose backend is no longer one of
/// the service's (`backends`, slots 0.. of the service id); returns how many. The same
/// selection as [`super::stale_affinity`], restricted to `touched`, without a walk of every
/// backend.
fn clean_affinity_of(
    pins: &PinScope,
    backends: &super::BeMap,
    touched: &HashSet<u32>,
) -> Result<usize, BpfError> {
    let live = |k: &NatAffKey, v: &NatAffVal| {
        (0u32..)
            .map_while(|slot| {
                backends.get(&NatBeKey {
                    svc_id: k.svc_id,
                    slot,
                })
            })
            .any(|b| b.addr == v.addr && b.port == v.port)
    };
    super::remove_affinity(pins, |entries| {
        entries
            .into_iter()
            .filter(|(k, v)| touched.contains(&k.svc_id) && !live(k, v))
            .map(|(k, _)| k)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use serval_calc::{Model, desired_state};
    use serval_model::parse_documents;

    use super::*;

    #[test]
    fn only_services_may_differ() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
                    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
        let model = Model::from_resources(parse_documents("t", yaml).unwrap());
        let a = desired_state(&model, Some("n1"));
        let mut b = a.clone();
        b.services = Default::default();
        assert!(same_but_services(&a, &b));
        let mut c = b.clone();
        c.node = Some("n2".into());
        assert!(!same_but_services(&a, &c));
        let mut e = b.clone();
        e.remote_blocks.push((
            "10.244.1.0/26".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        ));
        assert!(!same_but_services(&a, &e));
    }
}
