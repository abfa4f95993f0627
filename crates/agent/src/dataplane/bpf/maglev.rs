//! Maglev tables of the eBPF driver (`sv_maglev`): for every frontend whose
//! [`Frontend::maglev`](serval_calc::services::Frontend::maglev) is set, the frontend gets
//! `SV_NAT_FE_F_MAGLEV` and its service id gets the [`Table`] of its backends, built by
//! [`serval_calc::maglev`] from the backend addresses alone (node-independent: every node
//! writes the same table for the same backends, whatever order its own slots have).
//!
//! Entries are `(svc_id, index) → (backend, M)` for `index` in `0..M`, plus the
//! `SV_MAGLEV_META` entry that tells the programs M. They are diffed against the kernel like
//! the other maps and written before the frontends that use them; stale entries (a removed
//! service's table, a table beyond the limits below) are deleted first, so the map never
//! holds an old and a new table at once (a frontend whose table is missing for that moment
//! falls back to the random choice).
//!
//! **Sizes.** `M` = [`serval_calc::maglev::table_size`] of FelixConfiguration
//! `bpfMaglevMaxEndpointsPerService` (10007 for the default 100): every node must use the same
//! M for the cross-node agreement, which a cluster-wide `default` FelixConfiguration gives. A
//! frontend with more backends than that still gets a table (each backend fewer than 100
//! entries: less even, still consistent). At most `bpfMaglevMaxServices` frontends get a
//! table, and no more than fit the map ([`MAP_ENTRIES`] entries, `M + 1` per table), the first
//! ones by frontend key (the same choice on every node); the others keep the random choice
//! and a warning names the setting.

use std::collections::HashMap;

use aya::maps::{Map, MapData, MapError};
use serval_calc::DesiredState;
use serval_calc::maglev::{self, Table};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{MaglevKey, MaglevVal, NatFeKey, SV_MAGLEV_META, SV_NAT_FE_F_MAGLEV};
use serval_dp_bpf::object::MAP_MAGLEV;
use serval_model::calico::felix::FelixSettings;

use super::BpfError;

/// The table size for the default settings.
pub const TABLE_SIZE: u32 = maglev::DEFAULT_TABLE_SIZE;

/// `max_entries` of `sv_maglev` (bpf/serval_maps_def.h): `(10007 + 1) × 100`, the tables of the
/// default settings.
pub const MAP_ENTRIES: u32 = 1_000_800;

/// The FelixConfiguration settings of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevSettings {
    /// M, from `bpfMaglevMaxEndpointsPerService`.
    pub table_size: u32,
    /// `bpfMaglevMaxServices`.
    pub max_services: u32,
}

impl Default for MaglevSettings {
    fn default() -> Self {
        MaglevSettings {
            table_size: TABLE_SIZE,
            max_services: maglev::DEFAULT_MAX_SERVICES,
        }
    }
}

impl MaglevSettings {
    pub fn from_felix(f: &FelixSettings) -> Self {
        MaglevSettings {
            table_size: maglev::table_size(f.bpf_maglev_max_endpoints_per_service),
            max_services: f.bpf_maglev_max_services,
        }
    }

    /// How many tables may be written: `bpfMaglevMaxServices`, and no more than the map holds.
    pub fn max_tables(&self) -> usize {
        let fit = MAP_ENTRIES / (self.table_size + 1);
        self.max_services.min(fit) as usize
    }
}

/// Recomputes `want`'s tables (and the frontends' flags) for `settings` when they differ from
/// the defaults [`super::desired_contents`] used.
pub fn apply_settings(
    state: &DesiredState,
    want: &mut super::MapContents,
    settings: &MaglevSettings,
) {
    if *settings != MaglevSettings::default() {
        want.maglev = add_tables(state, &mut want.frontends, settings);
    }
}

/// Sets `SV_NAT_FE_F_MAGLEV` on the Maglev frontends of `frontends` (the driver's desired
/// `sv_nat_fe`, service ids assigned) that get a table, clears it on the others, and returns
/// the tables' entries.
pub fn add_tables(
    state: &DesiredState,
    frontends: &mut super::FeMap,
    settings: &MaglevSettings,
) -> HashMap<MaglevKey, MaglevVal> {
    let mut out = HashMap::new();
    let (mut tables, mut over) = (0usize, 0usize);
    let size = settings.table_size;
    for (k, fe) in &state.services.frontends {
        let fk = NatFeKey::new(k.ip, k.port, k.protocol.number());
        let Some(val) = frontends.get_mut(&fk) else {
            continue;
        };
        val.flags &= !SV_NAT_FE_F_MAGLEV;
        if !fe.maglev || fe.backends.is_empty() {
            continue;
        }
        if tables >= settings.max_tables() {
            over += 1;
            continue;
        }
        tables += 1;
        let table = match Table::build(fe.backends.iter().map(|b| (b.ip, b.port)), size) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(frontend = %k, error = %e, "no Maglev table; random backend choice");
                continue;
            }
        };
        val.flags |= SV_NAT_FE_F_MAGLEV;
        let svc_id = val.svc_id;
        out.insert(
            MaglevKey {
                svc_id,
                index: SV_MAGLEV_META,
            },
            MaglevVal::meta(table.size()),
        );
        for (index, (ip, port)) in table.entries() {
            out.insert(
                MaglevKey { svc_id, index },
                MaglevVal::new(ip, port, table.size()),
            );
        }
    }
    if over > 0 {
        tracing::warn!(
            frontends = over,
            tables = tables,
            table_size = size,
            "Maglev frontends beyond bpfMaglevMaxServices (or the sv_maglev map) choose backends \
             at random; raise bpfMaglevMaxServices or lower bpfMaglevMaxEndpointsPerService"
        );
    }
    out
}

/// Every entry of the pinned `sv_maglev` of `pins`.
pub fn read_kernel(pins: &PinScope) -> Result<HashMap<MaglevKey, MaglevVal>, BpfError> {
    let path = pins.map_path(MAP_MAGLEV);
    let shown = path.display().to_string();
    let rd = |source: MapError| BpfError::ReadPinned {
        path: shown.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(|source| BpfError::ReadPinned {
        path: shown.clone(),
        source,
    })?;
    let m: aya::maps::HashMap<MapData, MaglevKey, MaglevVal> =
        aya::maps::HashMap::try_from(Map::HashMap(data)).map_err(rd)?;
    let mut out = HashMap::new();
    for kv in m.iter() {
        let (k, v) = kv.map_err(rd)?;
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serval_calc::Model;
    use serval_dp_bpf::abi::SV_NAT_FE_F_EXTERNAL;

    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata:
  namespace: x
  name: web
  annotations: {lb.projectcalico.org/external-traffic-strategy: maglev}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: x
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
  nodeName: n1
- addresses: [10.244.2.5]
  conditions: {ready: true}
  nodeName: n2
- addresses: [10.244.3.5]
  conditions: {ready: true}
  nodeName: n3
ports: [{port: 8080}]
"#;

    fn state(node: &str, yaml: &str) -> DesiredState {
        let model = Model::from_resources(serval_model::parse_documents("t", yaml).unwrap());
        serval_calc::desired_state(&model, Some(node))
    }

    fn contents(node: &str, yaml: &str) -> super::super::MapContents {
        let s = state(node, yaml);
        let compiled = serval_calc::compile::compile_incremental(&s, &Default::default());
        super::super::desired_contents(
            &s,
            &compiled,
            &super::super::HostView::default(),
            &HashMap::new(),
        )
    }

    /// The table of the LoadBalancer frontend as (index → backend), service id left out.
    fn table_of(c: &super::super::MapContents) -> Vec<(u32, [u8; 16], u16)> {
        let fk = NatFeKey::new("198.51.100.10".parse().unwrap(), 80, 6);
        let svc = c.frontends[&fk].svc_id;
        let mut t: Vec<_> = c
            .maglev
            .iter()
            .filter(|(k, _)| k.svc_id == svc)
            .map(|(k, v)| (k.index, v.addr.0, u16::from_be(v.port)))
            .collect();
        t.sort();
        t
    }

    #[test]
    fn only_the_load_balancer_frontend_gets_the_flag_and_a_table() {
        let c = contents("n1", YAML);
        let lb = &c.frontends[&NatFeKey::new("198.51.100.10".parse().unwrap(), 80, 6)];
        assert_ne!(lb.flags & SV_NAT_FE_F_MAGLEV, 0);
        assert_ne!(lb.flags & SV_NAT_FE_F_EXTERNAL, 0);
        let cluster = &c.frontends[&NatFeKey::new("10.96.0.10".parse().unwrap(), 80, 6)];
        assert_eq!(cluster.flags & SV_NAT_FE_F_MAGLEV, 0);
        // one table: M entries plus the META entry, all of this service
        assert_eq!(c.maglev.len(), TABLE_SIZE as usize + 1);
        assert!(c.maglev.keys().all(|k| k.svc_id == lb.svc_id));
        assert_eq!(
            c.maglev[&MaglevKey {
                svc_id: lb.svc_id,
                index: SV_MAGLEV_META
            }]
                .size,
            TABLE_SIZE
        );
    }

    #[test]
    fn settings_bound_the_tables_by_bpf_maglev_max_services_and_the_map() {
        let mut f = FelixSettings::default();
        assert_eq!(MaglevSettings::from_felix(&f), MaglevSettings::default());
        assert_eq!(MaglevSettings::default().max_tables(), 100);
        f.bpf_maglev_max_endpoints_per_service = 3000;
        let big = MaglevSettings::from_felix(&f);
        assert_eq!(big.table_size, 300_007);
        assert_eq!(
            big.max_tables(),
            3,
            "three tables of 300008 entries fit the map"
        );
        f.bpf_maglev_max_endpoints_per_service = 20;
        f.bpf_maglev_max_services = 1;
        let small = MaglevSettings::from_felix(&f);
        assert_eq!((small.table_size, small.max_tables()), (2003, 1));

        // two Maglev services, one table allowed: the first frontend by key gets it, the
        // other keeps the random choice (flag cleared)
        let two = format!(
            "{YAML}---\n{}",
            YAML.replace("name: web\n", "name: web2\n")
                .replace("198.51.100.10", "198.51.100.20")
                .replace("10.96.0.10", "10.96.0.20")
                .replace("service-name: web}", "service-name: web2}")
                .replace("name: web-1", "name: web2-1")
        );
        let st = state("n1", &two);
        let mut c = contents("n1", &two);
        let lb = |ip: &str| NatFeKey::new(ip.parse().unwrap(), 80, 6);
        assert_ne!(
            c.frontends[&lb("198.51.100.20")].flags & SV_NAT_FE_F_MAGLEV,
            0
        );
        apply_settings(&st, &mut c, &small);
        assert_eq!(c.maglev.len(), 2003 + 1);
        assert_ne!(
            c.frontends[&lb("198.51.100.10")].flags & SV_NAT_FE_F_MAGLEV,
            0
        );
        assert_eq!(
            c.frontends[&lb("198.51.100.20")].flags & SV_NAT_FE_F_MAGLEV,
            0
        );
    }

    #[test]
    fn every_node_writes_the_same_table() {
        // n1, n2 and n3 each put their own backend first in sv_nat_be; the tables agree.
        let t1 = table_of(&contents("n1", YAML));
        assert_eq!(t1.len(), TABLE_SIZE as usize + 1);
        assert_eq!(t1, table_of(&contents("n2", YAML)));
        assert_eq!(t1, table_of(&contents("n3", YAML)));
        // and they are the table calc builds
        let want = Table::build(
            ["10.244.1.5", "10.244.2.5", "10.244.3.5"].map(|a| (a.parse().unwrap(), 8080)),
            TABLE_SIZE,
        )
        .unwrap();
        for (index, addr, port) in &t1 {
            if *index == SV_MAGLEV_META {
                continue;
            }
            let (ip, p) = want.entry(*index).unwrap();
            assert_eq!((*addr, *port), (serval_dp_bpf::abi::Addr::new(ip).0, p));
        }
    }

    #[test]
    fn no_annotation_no_table_and_a_removed_backend_changes_about_a_third() {
        let plain = YAML.replace(
            "annotations: {lb.projectcalico.org/external-traffic-strategy: maglev}",
            "annotations: {other: x}",
        );
        let c = contents("n1", &plain);
        assert!(c.maglev.is_empty());
        assert!(
            c.frontends
                .values()
                .all(|f| f.flags & SV_NAT_FE_F_MAGLEV == 0)
        );

        let full = table_of(&contents("n1", YAML));
        let fewer_yaml = YAML.replace(
            "- addresses: [10.244.3.5]\n  conditions: {ready: true}\n  nodeName: n3\n",
            "",
        );
        let fewer = table_of(&contents("n1", &fewer_yaml));
        assert_eq!(full.len(), fewer.len());
        let moved = full.iter().zip(&fewer).filter(|(a, b)| a != b).count();
        let f = moved as f64 / f64::from(TABLE_SIZE);
        assert!(
            (0.30..=0.36).contains(&f),
            "removing 1 of 3 backends moved {f:.3} of the entries"
        );
    }
}
