//! The routing programmer: makes the node's kernel match a [`Desired`] routing state and logs
//! every change it makes (`route added dst=… via=… dev=…`).
//!
//! What it owns, and so may change or remove:
//! - routes in the main table with Serval's route protocol ([`RTPROT_SERVAL`]) that are
//!   blackholes or leave by the underlay link or a Serval VXLAN device. Serval-protocol routes
//!   on other devices (the CNI's per-pod routes on host-side veths) and every route of any
//!   other protocol are never touched;
//! - the VXLAN devices [`VXLAN_V4_DEVICE`] and [`VXLAN_V6_DEVICE`], and every permanent
//!   neighbour and FDB entry on them.
//!
//! One [`Programmer::sync`] call reads the kernel's state, diffs, and applies the difference;
//! the agent calls it after every cache change and periodically, which repairs drift (a route
//! someone deleted by hand comes back at the next resync).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serval_sys::{IpFamily, MacAddr, Netlink, RTPROT_SERVAL, Route, RouteKind, Vxlan};

use crate::routes::{
    Desired, DesiredRoute, Family, RouteDev, RouteTarget, VXLAN_V4_DEVICE, VXLAN_V6_DEVICE,
    VxlanDevice, mac_string,
};

/// A failure to read the kernel's state (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("reading the kernel's {what} to diff against: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: serval_sys::Error,
    },
}

/// The link that carries this node's underlay address of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayLink {
    pub name: String,
    pub index: u32,
    pub mtu: Option<u32>,
}

/// What one sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub routes_added: usize,
    pub routes_replaced: usize,
    pub routes_removed: usize,
    pub neighbours_changed: usize,
    pub fdb_changed: usize,
    pub devices_changed: usize,
    /// Changes the kernel refused (each logged at warn); retried at the next sync.
    pub failures: usize,
}

impl SyncReport {
    pub fn changes(&self) -> usize {
        self.routes_added
            + self.routes_replaced
            + self.routes_removed
            + self.neighbours_changed
            + self.fdb_changed
            + self.devices_changed
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "routes +{} ~{} -{}, neighbours {}, fdb {}, devices {}, failures {}",
            self.routes_added,
            self.routes_replaced,
            self.routes_removed,
            self.neighbours_changed,
            self.fdb_changed,
            self.devices_changed,
            self.failures
        )
    }
}

/// One route change, as computed by [`diff_routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    Add(Route),
    /// Replace `old` with the new route.
    Replace {
        old: Route,
        new: Route,
    },
    Remove(Route),
}

/// Whether an existing Serval-protocol route is one this programmer owns.
pub fn owns_route(route: &Route, owned_oifs: &BTreeSet<u32>) -> bool {
    route.protocol == RTPROT_SERVAL
        && (route.kind == RouteKind::Blackhole
            || route.oif.is_some_and(|i| owned_oifs.contains(&i)))
}

/// Whether `actual` already does what `want` asks (destination, type, next hop, device).
fn same_route(actual: &Route, want: &Route) -> bool {
    actual.dst == want.dst
        && actual.kind == want.kind
        && actual.gateway == want.gateway
        && (want.oif.is_none() || actual.oif == want.oif)
}

/// The difference between `actual` (the kernel's routes of both families) and `want` (by
/// destination): only routes [`owns_route`] accepts are removed or replaced.
pub fn diff_routes(
    actual: &[Route],
    want: &BTreeMap<IpNet, Route>,
    owned_oifs: &BTreeSet<u32>,
) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    let mut satisfied = BTreeSet::new();
    let mut stale: BTreeMap<IpNet, Route> = BTreeMap::new();
    for r in actual.iter().filter(|r| owns_route(r, owned_oifs)) {
        match want.get(&r.dst) {
            Some(w) if same_route(r, w) && !satisfied.contains(&r.dst) => {
                satisfied.insert(r.dst);
            }
            Some(_) if !stale.contains_key(&r.dst) => {
                stale.insert(r.dst, r.clone());
            }
            // Not wanted, or a duplicate of a destination already handled.
            _ => changes.push(RouteChange::Remove(r.clone())),
        }
    }
    for (dst, w) in want {
        if satisfied.contains(dst) {
            if let Some(old) = stale.remove(dst) {
                changes.push(RouteChange::Remove(old));
            }
            continue;
        }
        match stale.remove(dst) {
            Some(old) => changes.push(RouteChange::Replace {
                old,
                new: w.clone(),
            }),
            None => changes.push(RouteChange::Add(w.clone())),
        }
    }
    changes
}

/// Programs one node's routing through a netlink connection in the node's namespace.
#[derive(Debug)]
pub struct Programmer {
    nl: Netlink,
}

fn sys_family(f: Family) -> IpFamily {
    match f {
        Family::V4 => IpFamily::V4,
        Family::V6 => IpFamily::V6,
    }
}

fn fmt_dev(index: Option<u32>, names: &BTreeMap<u32, String>) -> String {
    match index {
        Some(i) => names.get(&i).cloned().unwrap_or_else(|| format!("#{i}")),
        None => "-".into(),
    }
}

fn fmt_via(route: &Route) -> String {
    match (route.kind, route.gateway) {
        (RouteKind::Blackhole, _) => "blackhole".into(),
        (_, Some(gw)) => gw.to_string(),
        (_, None) => "-".into(),
    }
}

impl Programmer {
    /// A programmer acting through `nl` (open it in the node's namespace).
    pub fn new(nl: Netlink) -> Programmer {
        Programmer { nl }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// The link holding `addr` (this node's underlay address of one family).
    pub async fn underlay_link(&self, addr: IpAddr) -> Result<Option<UnderlayLink>, RoutingError> {
        let addrs = self
            .nl
            .addrs(None)
            .await
            .map_err(|source| RoutingError::Read {
                what: "addresses",
                source,
            })?;
        let Some(a) = addrs.iter().find(|a| a.net.addr() == addr) else {
            return Ok(None);
        };
        let link = self
            .nl
            .link_by_index(a.index)
            .await
            .map_err(|source| RoutingError::Read {
                what: "links",
                source,
            })?;
        Ok(Some(UnderlayLink {
            name: link.name,
            index: link.index,
            mtu: link.mtu,
        }))
    }

    /// Makes the kernel match `desired`. `underlay` maps each family to this node's underlay
    /// link (routes of a family without one are skipped and logged).
    pub async fn sync(
        &self,
        desired: &Desired,
        underlay: &BTreeMap<Family, UnderlayLink>,
    ) -> Result<SyncReport, RoutingError> {
        let mut report = SyncReport::default();
        let devices = self.sync_devices(desired, underlay, &mut report).await?;
        self.sync_neighbours(desired, &devices, &mut report).await?;
        self.sync_fdb(desired, &devices, &mut report).await?;
        self.sync_routes(desired, underlay, &devices, &mut report)
            .await?;
        Ok(report)
    }

    /// Creates, fixes or deletes the VXLAN devices; returns the index of each present one.
    async fn sync_devices(
        &self,
        desired: &Desired,
        underlay: &BTreeMap<Family, UnderlayLink>,
        report: &mut SyncReport,
    ) -> Result<BTreeMap<&'static str, u32>, RoutingError> {
        let links = self.nl.links().await.map_err(|source| RoutingError::Read {
            what: "links",
            source,
        })?;
        let mut present = BTreeMap::new();
        for name in [VXLAN_V4_DEVICE, VXLAN_V6_DEVICE] {
            let existing = links.iter().find(|l| l.name == name);
            match (desired.vxlan_devices.get(name), existing) {
                (None, None) => {}
                (None, Some(_)) => match self.nl.link_del(name).await {
                    Ok(()) => {
                        report.devices_changed += 1;
                        tracing::info!(
                            dev = name,
                            "vxlan device removed (no VXLAN pool of its family)"
                        );
                    }
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(dev = name, error = %e, "cannot remove vxlan device");
                    }
                },
                (Some(want), existing) => {
                    let Some(ul) = underlay.get(&want.family) else {
                        tracing::warn!(dev = name, family = %want.family, "no underlay link holds this node's address; cannot create the vxlan device");
                        continue;
                    };
                    match self.ensure_device(want, ul, existing, report).await {
                        Ok(index) => {
                            present.insert(name, index);
                        }
                        Err(e) => {
                            report.failures += 1;
                            tracing::warn!(dev = name, error = %e, "cannot program vxlan device");
                        }
                    }
                }
            }
        }
        Ok(present)
    }

    async fn ensure_device(
        &self,
        want: &VxlanDevice,
        underlay: &UnderlayLink,
        existing: Option<&serval_sys::Link>,
        report: &mut SyncReport,
    ) -> serval_sys::Result<u32> {
        let mac = MacAddr(want.mac);
        // A VXLAN device whose VNI, port, local address or underlay link differ from what is
        // wanted (e.g. the node's underlay address changed) cannot be fixed in place.
        let reusable = match existing {
            Some(link) if link.kind.as_deref() == Some("vxlan") => {
                let info = self.nl.vxlan_info(want.name).await?;
                let same = info.vni == want.vni
                    && info.port == want.port
                    && info.local == Some(want.local)
                    && info.underlay.as_deref() == Some(underlay.name.as_str());
                if !same {
                    self.nl.link_del(want.name).await?;
                    report.devices_changed += 1;
                    tracing::info!(
                        dev = want.name,
                        vni = info.vni,
                        port = info.port,
                        local = ?info.local,
                        underlay = ?info.underlay,
                        "vxlan device removed: its configuration differs from the wanted one"
                    );
                }
                same
            }
            _ => false,
        };
        if let Some(link) = existing {
            if reusable {
                if link.mtu != Some(want.mtu) {
                    self.nl.link_set_mtu(want.name, want.mtu).await?;
                    report.devices_changed += 1;
                    tracing::info!(dev = want.name, mtu = want.mtu, "vxlan device MTU set");
                }
                if link.mac != Some(mac) {
                    self.nl.link_set_mac(want.name, mac).await?;
                    report.devices_changed += 1;
                    tracing::info!(dev = want.name, mac = %mac, "vxlan device MAC set");
                }
                if !link.up {
                    self.nl.link_set_up(want.name).await?;
                    report.devices_changed += 1;
                    tracing::info!(dev = want.name, "vxlan device set up");
                }
                return Ok(link.index);
            }
            if link.kind.as_deref() != Some("vxlan") {
                // Something else took the name: replace it with ours.
                self.nl.link_del(want.name).await?;
                tracing::info!(dev = want.name, kind = ?link.kind, "removed a non-VXLAN link holding the vxlan device's name");
            }
        }
        let spec = Vxlan::new(want.name, want.vni)
            .port(want.port)
            .local(want.local)
            .underlay(underlay.name.clone())
            .mtu(want.mtu)
            .mac(mac)
            .learning(false);
        let index = self.nl.vxlan_add(&spec).await?;
        self.nl.link_set_up(want.name).await?;
        report.devices_changed += 1;
        tracing::info!(
            dev = want.name,
            vni = want.vni,
            port = want.port,
            local = %want.local,
            underlay = %underlay.name,
            mtu = want.mtu,
            mac = %mac,
            "vxlan device created"
        );
        Ok(index)
    }

    async fn sync_neighbours(
        &self,
        desired: &Desired,
        devices: &BTreeMap<&'static str, u32>,
        report: &mut SyncReport,
    ) -> Result<(), RoutingError> {
        for &dev in devices.keys() {
            let actual =
                self.nl
                    .neighbours(Some(dev))
                    .await
                    .map_err(|source| RoutingError::Read {
                        what: "neighbours",
                        source,
                    })?;
            let want: BTreeMap<IpAddr, &crate::routes::Neighbour> = desired
                .neighbours
                .iter()
                .filter(|n| n.dev == dev)
                .map(|n| (n.ip, n))
                .collect();
            for n in actual.iter().filter(|n| n.permanent) {
                let keep = want
                    .get(&n.ip)
                    .is_some_and(|w| n.mac == Some(MacAddr(w.mac)));
                if !keep && !want.contains_key(&n.ip) {
                    match self.nl.neigh_del(dev, n.ip).await {
                        Ok(()) => {
                            report.neighbours_changed += 1;
                            tracing::info!(dev, ip = %n.ip, "neighbour removed");
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            report.failures += 1;
                            tracing::warn!(dev, ip = %n.ip, error = %e, "cannot remove neighbour");
                        }
                    }
                }
            }
            for (ip, w) in &want {
                let ok = actual
                    .iter()
                    .any(|n| n.ip == *ip && n.permanent && n.mac == Some(MacAddr(w.mac)));
                if ok {
                    continue;
                }
                match self.nl.neigh_replace(dev, *ip, MacAddr(w.mac)).await {
                    Ok(()) => {
                        report.neighbours_changed += 1;
                        tracing::info!(dev, ip = %ip, lladdr = %mac_string(&w.mac), node = %w.node, "neighbour added");
                    }
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(dev, ip = %ip, error = %e, "cannot add neighbour");
                    }
                }
            }
        }
        Ok(())
    }

    async fn sync_fdb(
        &self,
        desired: &Desired,
        devices: &BTreeMap<&'static str, u32>,
        report: &mut SyncReport,
    ) -> Result<(), RoutingError> {
        for &dev in devices.keys() {
            let actual = self
                .nl
                .fdb_entries(dev)
                .await
                .map_err(|source| RoutingError::Read {
                    what: "FDB entries",
                    source,
                })?;
            let want: BTreeSet<(MacAddr, IpAddr)> = desired
                .fdb
                .iter()
                .filter(|f| f.dev == dev)
                .map(|f| (MacAddr(f.mac), f.dst))
                .collect();
            for e in &actual {
                let Some(dst) = e.dst else { continue };
                if !want.contains(&(e.mac, dst)) {
                    match self.nl.fdb_del(dev, e.mac, Some(dst)).await {
                        Ok(()) => {
                            report.fdb_changed += 1;
                            tracing::info!(dev, mac = %e.mac, dst = %dst, "fdb entry removed");
                        }
                        Err(err) if err.is_not_found() => {}
                        Err(err) => {
                            report.failures += 1;
                            tracing::warn!(dev, mac = %e.mac, dst = %dst, error = %err, "cannot remove fdb entry");
                        }
                    }
                }
            }
            for (mac, dst) in &want {
                if actual.iter().any(|e| e.mac == *mac && e.dst == Some(*dst)) {
                    continue;
                }
                match self.nl.fdb_replace(dev, *mac, Some(*dst)).await {
                    Ok(()) => {
                        report.fdb_changed += 1;
                        tracing::info!(dev, mac = %mac, dst = %dst, "fdb entry added");
                    }
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(dev, mac = %mac, dst = %dst, error = %e, "cannot add fdb entry");
                    }
                }
            }
        }
        Ok(())
    }

    /// The kernel route for one desired route, or `None` when its device is missing.
    fn kernel_route(
        want: &DesiredRoute,
        underlay: &BTreeMap<Family, UnderlayLink>,
        devices: &BTreeMap<&'static str, u32>,
    ) -> Option<Route> {
        match &want.target {
            RouteTarget::Blackhole => Some(Route::new(want.dst).blackhole()),
            RouteTarget::Via {
                gateway,
                dev,
                onlink,
            } => {
                let oif = match dev {
                    RouteDev::Underlay => underlay.get(&Family::of_net(&want.dst))?.index,
                    RouteDev::Vxlan(name) => *devices.get(name)?,
                };
                let r = Route::new(want.dst).via(*gateway).dev(oif);
                Some(if *onlink { r.onlink() } else { r })
            }
        }
    }

    async fn sync_routes(
        &self,
        desired: &Desired,
        underlay: &BTreeMap<Family, UnderlayLink>,
        devices: &BTreeMap<&'static str, u32>,
        report: &mut SyncReport,
    ) -> Result<(), RoutingError> {
        let mut want = BTreeMap::new();
        for d in desired.routes.values() {
            match Self::kernel_route(d, underlay, devices) {
                Some(r) => {
                    want.insert(d.dst, r);
                }
                None => {
                    tracing::warn!(dst = %d.dst, node = %d.node, dev = ?d.target, "no device for this route yet; skipped");
                }
            }
        }
        let mut actual = Vec::new();
        for family in [Family::V4, Family::V6] {
            actual.extend(
                self.nl
                    .routes(sys_family(family), Some(RTPROT_SERVAL))
                    .await
                    .map_err(|source| RoutingError::Read {
                        what: "routes",
                        source,
                    })?,
            );
        }
        let owned: BTreeSet<u32> = underlay
            .values()
            .map(|u| u.index)
            .chain(devices.values().copied())
            .collect();
        let mut names: BTreeMap<u32, String> = underlay
            .values()
            .map(|u| (u.index, u.name.clone()))
            .collect();
        names.extend(devices.iter().map(|(n, i)| (*i, n.to_string())));
        let node_of = |dst: &IpNet| {
            desired
                .routes
                .get(dst)
                .map(|d| d.node.clone())
                .unwrap_or_default()
        };

        for change in diff_routes(&actual, &want, &owned) {
            match change {
                RouteChange::Add(r) => match self.nl.route_replace(&r).await {
                    Ok(()) => {
                        report.routes_added += 1;
                        tracing::info!(dst = %r.dst, via = %fmt_via(&r), dev = %fmt_dev(r.oif, &names), node = %node_of(&r.dst), "route added");
                    }
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(dst = %r.dst, via = %fmt_via(&r), dev = %fmt_dev(r.oif, &names), error = %e, "cannot add route");
                    }
                },
                RouteChange::Replace { old, new } => {
                    // A type change (blackhole <-> unicast) is not a replace in the kernel's
                    // eyes for every family; delete first then add.
                    if old.kind != new.kind
                        && let Err(e) = self.nl.route_del(&old).await
                        && !e.is_not_found()
                    {
                        tracing::warn!(dst = %old.dst, error = %e, "cannot remove the old route before replacing it");
                    }
                    match self.nl.route_replace(&new).await {
                        Ok(()) => {
                            report.routes_replaced += 1;
                            tracing::info!(
                                dst = %new.dst,
                                via = %fmt_via(&new),
                                dev = %fmt_dev(new.oif, &names),
                                old_via = %fmt_via(&old),
                                old_dev = %fmt_dev(old.oif, &names),
                                node = %node_of(&new.dst),
                                "route replaced"
                            );
                        }
                        Err(e) => {
                            report.failures += 1;
                            tracing::warn!(dst = %new.dst, error = %e, "cannot replace route");
                        }
                    }
                }
                RouteChange::Remove(r) => match self.nl.route_del(&r).await {
                    Ok(()) => {
                        report.routes_removed += 1;
                        tracing::info!(dst = %r.dst, via = %fmt_via(&r), dev = %fmt_dev(r.oif, &names), "route removed");
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(dst = %r.dst, error = %e, "cannot remove route");
                    }
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn diff_adds_replaces_removes_and_leaves_foreign_routes_alone() {
        let owned: BTreeSet<u32> = [2, 7].into();
        let keep = Route::new(net("10.0.1.0/26"))
            .via("172.31.7.12".parse().unwrap())
            .dev(2);
        let wrong_gw = Route::new(net("10.0.2.0/26"))
            .via("172.31.7.99".parse().unwrap())
            .dev(2);
        let gone = Route::new(net("10.0.3.0/26"))
            .via("172.31.7.13".parse().unwrap())
            .dev(2);
        let gone_blackhole = Route::new(net("10.0.9.0/26")).blackhole();
        // The CNI's per-pod route: Serval protocol but on a pod veth (index 40): not ours.
        let pod = Route::new(net("10.0.0.5/32")).dev(40);
        // Another protocol on our device: not ours.
        let static_route = Route::new(net("10.0.4.0/26"))
            .via("172.31.7.1".parse().unwrap())
            .dev(2)
            .protocol(4);
        let actual = vec![
            keep.clone(),
            wrong_gw.clone(),
            gone.clone(),
            gone_blackhole.clone(),
            pod,
            static_route,
        ];

        let mut want = BTreeMap::new();
        want.insert(keep.dst, keep.clone());
        let fixed = Route::new(net("10.0.2.0/26"))
            .via("172.31.7.14".parse().unwrap())
            .dev(7)
            .onlink();
        want.insert(fixed.dst, fixed.clone());
        let new = Route::new(net("10.0.0.0/26")).blackhole();
        want.insert(new.dst, new.clone());

        let changes = diff_routes(&actual, &want, &owned);
        assert_eq!(changes.len(), 4, "{changes:#?}");
        assert!(changes.contains(&RouteChange::Replace {
            old: wrong_gw,
            new: fixed
        }));
        assert!(changes.contains(&RouteChange::Remove(gone)));
        assert!(changes.contains(&RouteChange::Remove(gone_blackhole)));
        assert!(changes.contains(&RouteChange::Add(new)));
    }

    #[test]
    fn diff_of_matching_state_is_empty_and_duplicates_are_removed() {
        let owned: BTreeSet<u32> = [2].into();
        let r = Route::new(net("10.0.1.0/26"))
            .via("172.31.7.12".parse().unwrap())
            .dev(2);
        let mut want = BTreeMap::new();
        want.insert(r.dst, r.clone());
        assert!(diff_routes(std::slice::from_ref(&r), &want, &owned).is_empty());
        // The same destination twice (different metric): the extra one goes.
        let dup = r.clone().metric(5);
        let changes = diff_routes(&[r.clone(), dup.clone()], &want, &owned);
        assert_eq!(changes, vec![RouteChange::Remove(dup)]);
    }
}
