//! Loading the embedded programs with aya, their maps created or reopened from pins in a
//! per-node directory on bpffs.
//!
//! Pin layout, for scope `S` (the lab gives every node its own scope, because all lab nodes
//! share one kernel):
//!
//! ```text
//! /sys/fs/bpf/serval/S/maps/sv_ct, sv_nat_fe, ...   the maps (contents survive restarts)
//! /sys/fs/bpf/serval/S/links/HOOK/IFNAME            TCX links (programs stay attached)
//! /sys/fs/bpf/serval/S/links/HOOK-clsact/IFNAME     marker of a clsact-fallback attachment
//! ```
//!
//! HOOK is `from_ep` or `to_ep`. bpffs refuses names with '.', so a '.' in an interface name
//! is written as ':' (which interface names cannot contain), and scopes may not contain '.'.
//!
//! On load, a pinned map whose type, key size, value size, max_entries or flags differ from
//! what this build wants (a changed `bpfMapSize*` setting, or an ABI change) is **recreated
//! empty**: its pin is removed and a new map is created and pinned, with a warning. The agent
//! rewrites NAT, route, policy and endpoint maps from the desired state on every start anyway;
//! conntrack entries of that map are lost, so established flows are re-evaluated by policy
//! (copying entries into the resized map is possible later). Maps whose pins match are reused
//! with their contents.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{ProgramError, SchedClassifier},
};
use nix::{
    mount::MsFlags,
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::{
    error::LoadError,
    object::{
        HEP_SPEC, LogLevel, MAP_CT, MAP_EPS, MAP_NAT_AFF, MAP_NAT_BE, MAP_NAT_FE, MAP_POLICY,
        MAP_ROUTES, ObjectSpec, TC_SPEC, hep_object, tc_object, validate_spec,
    },
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Serval's directory on bpffs; scopes live below it.
pub const PIN_DIR: &str = "serval";

/// A per-node pin directory: `BPFFS/serval/SCOPE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinScope {
    bpffs: PathBuf,
    scope: String,
}

impl PinScope {
    /// `/sys/fs/bpf/serval/SCOPE`. A scope is 1-64 of `[A-Za-z0-9_-]` (bpffs refuses '.').
    pub fn new(scope: &str) -> Result<Self, LoadError> {
        Self::with_bpffs(BPFFS, scope)
    }

    /// `BPFFS/serval/SCOPE` for another bpffs mount point.
    pub fn with_bpffs(bpffs: impl Into<PathBuf>, scope: &str) -> Result<Self, LoadError> {
        let invalid = |reason| LoadError::InvalidScope {
            scope: scope.to_owned(),
            reason,
        };
        if scope.is_empty() || scope.len() > 64 {
            return Err(invalid("a scope is 1 to 64 characters"));
        }
        if !scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(invalid(
                "a scope may only contain A-Z a-z 0-9 _ - (bpffs refuses '.' in names)",
            ));
        }
        Ok(Self {
            bpffs: bpffs.into(),
            scope: scope.to_owned(),
        })
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The bpffs mount point.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// `BPFFS/serval/SCOPE`.
    pub fn dir(&self) -> PathBuf {
        self.bpffs.join(PIN_DIR).join(&self.scope)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.maps_dir().join(map)
    }
}

/// Map sizes, from FelixConfiguration's `bpfMapSize*` fields (Calico's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `bpfMapSizeNATFrontend`.
    pub nat_frontend: u32,
    /// `bpfMapSizeNATBackend`.
    pub nat_backend: u32,
    /// `bpfMapSizeNATAffinity`.
    pub nat_affinity: u32,
    /// `bpfMapSizeRoute` (routes and identities: one LPM trie).
    pub route: u32,
    /// `bpfMapSizeConntrack`.
    pub conntrack: u32,
    /// Compiled policy entries (Serval's own; no FelixConfiguration field).
    pub policy: u32,
    /// Workload interfaces (Serval's own).
    pub endpoints: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            nat_frontend: 65536,
            nat_backend: 262144,
            nat_affinity: 65536,
            route: 262144,
            conntrack: 512000,
            policy: 262144,
            endpoints: 16384,
        }
    }
}

impl MapSizes {
    /// The size for `map`, or None for fixed-size maps.
    pub fn for_map(&self, map: &str) -> Option<u32> {
        Some(match map {
            MAP_CT => self.conntrack,
            MAP_NAT_FE => self.nat_frontend,
            MAP_NAT_BE => self.nat_backend,
            MAP_NAT_AFF => self.nat_affinity,
            MAP_ROUTES => self.route,
            MAP_POLICY => self.policy,
            MAP_EPS => self.endpoints,
            _ => return None,
        })
    }
}

/// How to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin maps (and links) under this scope; None: private maps that die with the
    /// [`Dataplane`] (program tests).
    pub pins: Option<PinScope>,
    pub sizes: MapSizes,
    /// FelixConfiguration `bpfLogLevel`: Debug selects the build that logs decisions.
    pub log_level: LogLevel,
}

/// The loaded programs and their maps. Dropping it closes our handles only: pinned maps and
/// pinned links (see [`crate::attach`]) stay.
#[derive(Debug)]
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) pins: Option<PinScope>,
    /// Unpinned attachments (no scope), detached when this is dropped.
    pub(crate) unpinned_links: Vec<aya::programs::tc::SchedClassifierLink>,
}

impl Dataplane {
    /// Loads the embedded object for `opts.log_level`.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let (name, data) = tc_object(opts.log_level);
        Self::load_object(name, data, opts)
    }

    /// Loads `data` (named `name` in errors): validates it (empty, foreign or stale objects
    /// fail before any syscall), makes sure bpffs is mounted and the pin directory exists,
    /// recreates pinned maps that no longer fit (module docs), creates or reopens every map
    /// and loads every program (a verifier rejection carries the verifier log).
    pub fn load_object(name: &str, data: &[u8], opts: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_object_spec(name, data, &TC_SPEC, opts)
    }

    /// Loads the embedded host endpoint object (`bpf/serval_hep.c`) for `opts.log_level`: its
    /// programs, with the shared maps and its own pinned in the same scope as [`Self::load`]'s.
    pub fn load_hep(opts: &LoadOptions) -> Result<Self, LoadError> {
        let (name, data) = hep_object(opts.log_level);
        Self::load_object_spec(name, data, &HEP_SPEC, opts)
    }

    /// [`Self::load_object`] for an object of `spec` (its programs and maps).
    pub fn load_object_spec(
        name: &str,
        data: &[u8],
        spec: &ObjectSpec,
        opts: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let object = spec;
        let obj = validate_spec(name, data, object)?;
        if let Some(pins) = &opts.pins {
            ensure_bpffs(pins.bpffs())?;
            let dir = pins.maps_dir();
            fs::create_dir_all(&dir).map_err(|source| LoadError::Io {
                op: "creating pin directory",
                path: dir.clone(),
                source,
            })?;
            reconcile_pinned_maps(pins, &obj, &opts.sizes, object)?;
        }

        let mut loader = EbpfLoader::new();
        for spec in object.all_maps() {
            if let Some(size) = opts.sizes.for_map(spec.name) {
                loader.map_max_entries(spec.name, size);
            }
            if let Some(pins) = &opts.pins {
                loader.map_pin_path(spec.name, pins.map_path(spec.name));
            }
        }
        // aya wants the bytes 4-byte aligned; the embedded objects are, callers' may not be.
        let aligned: Vec<u32>;
        let data = if data.as_ptr().align_offset(4) == 0 {
            data
        } else {
            aligned = data
                .chunks(4)
                .map(|c| {
                    let mut w = [0u8; 4];
                    w[..c.len()].copy_from_slice(c);
                    u32::from_ne_bytes(w)
                })
                .collect();
            // SAFETY: `aligned` holds data.len() rounded up to 4 initialised bytes and lives
            // until the end of this function; we view only the first data.len() of them.
            unsafe { std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), data.len()) }
        };
        let mut ebpf = loader.load(data).map_err(|source| LoadError::Maps {
            object: name.to_owned(),
            sizes: format!("{:?}", opts.sizes),
            source,
        })?;
        for &program in object.programs {
            load_program(&mut ebpf, program)?;
        }
        tracing::debug!(
            object = name,
            scope = opts.pins.as_ref().map(PinScope::scope),
            "loaded BPF programs"
        );
        Ok(Self {
            ebpf,
            pins: opts.pins.clone(),
            unpinned_links: Vec::new(),
        })
    }

    /// The pin scope, if loaded with one.
    pub fn pins(&self) -> Option<&PinScope> {
        self.pins.as_ref()
    }

    pub(crate) fn program(&self, name: &'static str) -> Result<&SchedClassifier, LoadError> {
        let program = self
            .ebpf
            .program(name)
            .ok_or(LoadError::ProgramMissing { program: name })?;
        program.try_into().map_err(|source| LoadError::ProgramType {
            program: name,
            source,
        })
    }

    pub(crate) fn program_mut(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, LoadError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::ProgramMissing { program: name })?;
        program.try_into().map_err(|source| LoadError::ProgramType {
            program: name,
            source,
        })
    }
}

/// Loads one tc program of `ebpf` into the kernel; a verifier rejection keeps its log.
pub(crate) fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::ProgramMissing { program: name })?;
    let tc: &mut SchedClassifier = program
        .try_into()
        .map_err(|source| LoadError::ProgramType {
            program: name,
            source,
        })?;
    tc.load().map_err(|err| match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => LoadError::Verifier {
            program: name,
            verifier_log: verifier_log.to_string(),
            source: io_error,
        },
        source => LoadError::Program {
            program: name,
            source,
        },
    })
}

/// Serialises [`ensure_bpffs`] within this process; an `flock` does it across processes.
static BPFFS_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at `path` unless it already is a bpffs mount (what `mount -t bpf bpf PATH`
/// does; agents of Calico and Cilium do the same at start). Concurrent callers (parallel
/// tests, several lab agents starting at once) never stack two mounts: the check and the
/// mount happen under a lock on the mount point.
pub fn ensure_bpffs(path: &Path) -> Result<(), LoadError> {
    if is_bpffs(path) {
        return Ok(());
    }
    let _in_process = BPFFS_SETUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(path).map_err(|source| LoadError::Io {
        op: "creating bpffs mount point",
        path: path.to_owned(),
        source,
    })?;
    let dir = fs::File::open(path).map_err(|source| LoadError::Io {
        op: "opening bpffs mount point",
        path: path.to_owned(),
        source,
    })?;
    let _across_processes = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| LoadError::Io {
            op: "locking bpffs mount point",
            path: path.to_owned(),
            source: io::Error::from(errno),
        })?;
    // Someone may have mounted it while we waited.
    if is_bpffs(path) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| LoadError::MountBpffs {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

/// Removes pins of maps that do not match what this load wants (see the module docs).
fn reconcile_pinned_maps(
    pins: &PinScope,
    obj: &aya_obj::Object,
    sizes: &MapSizes,
    object: &ObjectSpec,
) -> Result<(), LoadError> {
    for spec in object.all_maps() {
        let path = pins.map_path(spec.name);
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(_) if !path.exists() => continue,
            Err(source) => return Err(LoadError::PinnedMapInfo { path, source }),
        };
        let Some(want) = obj.maps.get(spec.name) else {
            continue;
        };
        let want_entries = sizes.for_map(spec.name).unwrap_or(want.max_entries());
        let have_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let same = have_type == want.map_type()
            && info.key_size() == want.key_size()
            && info.value_size() == want.value_size()
            && info.max_entries() == want_entries
            && info.map_flags() == want.map_flags();
        if same {
            continue;
        }
        tracing::warn!(
            map = spec.name,
            path = %path.display(),
            have_entries = info.max_entries(),
            want_entries,
            have_key = info.key_size(),
            want_key = want.key_size(),
            have_value = info.value_size(),
            want_value = want.value_size(),
            "pinned map does not match this build or its configured size; recreating it empty"
        );
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LoadError::Io {
                    op: "removing stale pinned map",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_plain_directory_names_without_dots() {
        let scope = PinScope::new("lab-n1_x").unwrap();
        assert_eq!(scope.dir(), Path::new("/sys/fs/bpf/serval/lab-n1_x"));
        assert_eq!(
            scope.map_path("sv_ct"),
            Path::new("/sys/fs/bpf/serval/lab-n1_x/maps/sv_ct")
        );
        for bad in ["", "a.b", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(PinScope::new(bad), Err(LoadError::InvalidScope { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn map_sizes_default_to_calicos() {
        let sizes = MapSizes::default();
        assert_eq!(sizes.for_map(MAP_NAT_FE), Some(65536));
        assert_eq!(sizes.for_map(MAP_NAT_BE), Some(262144));
        assert_eq!(sizes.for_map(MAP_NAT_AFF), Some(65536));
        assert_eq!(sizes.for_map(MAP_ROUTES), Some(262144));
        assert_eq!(sizes.for_map(MAP_CT), Some(512000));
        assert_eq!(sizes.for_map(crate::object::MAP_DROPS), None);
    }
}
