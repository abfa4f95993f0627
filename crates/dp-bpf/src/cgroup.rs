//! Connect-time load balancing: loading `bpf/serval_ctlb.c` (cgroup v2 socket-address
//! programs) in a node's pin scope and attaching it to the node's cgroup.
//!
//! - **Maps.** The object shares the node's pinned `sv_nat_fe` / `sv_nat_be` / `sv_nat_aff`
//!   (load the tc object first: it creates them with the configured sizes) and pins its own
//!   `sv_ctlb_fwd` / `sv_ctlb_rev` next to them (`SCOPE/maps/`), so [`crate::cleanup`] removes
//!   them with the rest.
//! - **Links.** Each program is attached with a BPF link (multi-program cgroup attachment,
//!   other programs on the cgroup are left alone), pinned at `SCOPE/cgroup/PROGRAM`; the pin
//!   keeps it attached after the agent exits. A later load attaches its new programs first,
//!   then replaces the pins (the old links are released), so there is no moment without a
//!   program; while both are attached the second finds a backend address, which is no
//!   frontend, and does nothing.
//! - **Which protocols** ([`CtlbProtocols`], FelixConfiguration `bpfConnectTimeLoadBalancing`)
//!   is a constant of the loaded programs: a change means a new load.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink, links::PinnedLink},
};
use thiserror::Error;

use crate::{
    abi::{CtlbKey, CtlbVal, SV_CTLB_F_TCP, SV_CTLB_F_UDP},
    loader::{MapSizes, PinScope, ensure_bpffs},
    object::{LogLevel, MAPS, ctlb_object},
};

/// The programs of the object, in attach order.
pub const CTLB_PROGRAMS: [&str; 8] = [
    "serval_ctlb_recvmsg4",
    "serval_ctlb_recvmsg6",
    "serval_ctlb_getpeername4",
    "serval_ctlb_getpeername6",
    "serval_ctlb_sendmsg4",
    "serval_ctlb_sendmsg6",
    "serval_ctlb_connect4",
    "serval_ctlb_connect6",
];
/// (socket, frontend) → backend of unconnected UDP sockets.
pub const MAP_CTLB_FWD: &str = "sv_ctlb_fwd";
/// (socket, backend) → the frontend it stands for (recvmsg, getpeername).
pub const MAP_CTLB_REV: &str = "sv_ctlb_rev";
const OWN_MAPS: [&str; 2] = [MAP_CTLB_FWD, MAP_CTLB_REV];
/// The rodata globals: the protocols, and those of the host's own sockets.
const GLOBAL_PROTOS: &str = "sv_ctlb_protos";
const GLOBAL_HOST_PROTOS: &str = "sv_ctlb_host_protos";
const GLOBAL_HOST_NETNS: &str = "sv_ctlb_host_netns";
/// A pin being replaced carries this suffix until the old one is gone (bpffs refuses '.').
const NEW_SUFFIX: &str = "-new";

/// Which protocols are translated at connect time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CtlbProtocols {
    /// `bpfConnectTimeLoadBalancing: TCP` (the default).
    #[default]
    Tcp,
    /// `Enabled`: TCP and UDP.
    TcpUdp,
}

impl CtlbProtocols {
    /// The `SV_CTLB_F_*` bits.
    pub fn bits(self) -> u32 {
        match self {
            Self::Tcp => SV_CTLB_F_TCP,
            Self::TcpUdp => SV_CTLB_F_TCP | SV_CTLB_F_UDP,
        }
    }
}

/// Translation for the sockets of one network namespace only (the node's own: its
/// host-networked clients), in addition to [`CtlbProtocols`] for every socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostSockets {
    /// The namespace's cookie ([`netns_cookie`]).
    pub netns_cookie: u64,
    pub tcp: bool,
    pub udp: bool,
}

impl HostSockets {
    fn bits(&self) -> u32 {
        (if self.tcp { SV_CTLB_F_TCP } else { 0 }) | (if self.udp { SV_CTLB_F_UDP } else { 0 })
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+),
/// as `bpf_get_netns_cookie` reports it.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just created and own; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` (8) bytes into `cookie`, which lives on our
    // stack for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Why loading, attaching or detaching the connect-time load balancer failed.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "BPF object {name} is unusable ({reason}); rebuild serval-dp-bpf (build.rs compiles bpf/serval_ctlb.c)"
    )]
    Object { name: String, reason: String },
    #[error(
        "loading {name} in pin scope {scope} (its maps are the scope's pinned NAT maps: load the tc object first)"
    )]
    Load {
        name: String,
        scope: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the verifier rejected {program}:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        verifier_log: String,
        #[source]
        source: io::Error,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "{path} is not a cgroup v2 directory: {source}; give the node's cgroup (e.g. /sys/fs/cgroup/unified/serval/NODE) or create it"
    )]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {program} to cgroup {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the link of {program} at {path}: {source}")]
    Pin {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("opening pinned link {path}: {source}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `SCOPE/cgroup`: the pinned links of the cgroup programs.
pub fn links_dir(pins: &PinScope) -> PathBuf {
    pins.dir().join("cgroup")
}

fn link_pin(pins: &PinScope, program: &str) -> PathBuf {
    links_dir(pins).join(program)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

/// The connect-time load balancer, loaded (not necessarily attached).
#[derive(Debug)]
pub struct Ctlb {
    ebpf: Ebpf,
    pins: PinScope,
    protocols: CtlbProtocols,
}

/// Checks the embedded object before any syscall: an eBPF ELF with every program and map,
/// the maps' key and value sizes equal to the Rust mirror.
fn validate(name: &str, data: &[u8]) -> Result<(), CgroupError> {
    let bad = |reason: String| CgroupError::Object {
        name: name.to_owned(),
        reason,
    };
    if data.is_empty() {
        return Err(bad("empty".into()));
    }
    let obj = aya_obj::Object::parse(data).map_err(|e| bad(format!("not an eBPF ELF: {e}")))?;
    for program in CTLB_PROGRAMS {
        if !obj.programs.contains_key(program) {
            return Err(bad(format!("no program {program}")));
        }
    }
    let own = |n: &'static str| crate::object::MapSpec {
        name: n,
        key_size: size_of::<CtlbKey>() as u32,
        value_size: size_of::<CtlbVal>() as u32,
    };
    for spec in MAPS.iter().copied().chain(OWN_MAPS.map(own)) {
        let Some(map) = obj.maps.get(spec.name) else {
            if OWN_MAPS.contains(&spec.name) {
                return Err(bad(format!("no map {}", spec.name)));
            }
            continue;
        };
        if map.key_size() != spec.key_size || map.value_size() != spec.value_size {
            return Err(bad(format!(
                "map {} has key/value sizes {}/{}, this build's ABI wants {}/{}",
                spec.name,
                map.key_size(),
                map.value_size(),
                spec.key_size,
                spec.value_size
            )));
        }
    }
    Ok(())
}

impl Ctlb {
    /// Loads the embedded object for `log_level` in `pins` (the scope's pinned NAT maps must
    /// exist: load the tc [`crate::Dataplane`] first), translating `protocols`.
    pub fn load(
        pins: &PinScope,
        sizes: &MapSizes,
        log_level: LogLevel,
        protocols: CtlbProtocols,
    ) -> Result<Ctlb, CgroupError> {
        Self::load_with_host(pins, sizes, log_level, protocols, None)
    }

    /// [`Ctlb::load`], translating in addition `host`'s protocols for the sockets of its
    /// network namespace.
    pub fn load_with_host(
        pins: &PinScope,
        sizes: &MapSizes,
        log_level: LogLevel,
        protocols: CtlbProtocols,
        host: Option<HostSockets>,
    ) -> Result<Ctlb, CgroupError> {
        let (name, data) = ctlb_object(log_level);
        validate(name, data)?;
        ensure_bpffs(pins.bpffs()).map_err(|e| CgroupError::Io {
            op: "mounting bpffs at",
            path: pins.bpffs().to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let maps = pins.maps_dir();
        fs::create_dir_all(&maps).map_err(io_err("creating pin directory", &maps))?;
        // A pinned map of ours from another build (other key/value sizes) is recreated: its
        // entries are only a cache of translations.
        for map in OWN_MAPS {
            let path = pins.map_path(map);
            if let Ok(info) = aya::maps::MapInfo::from_pin(&path)
                && (info.key_size() as usize != size_of::<CtlbKey>()
                    || info.value_size() as usize != size_of::<CtlbVal>())
            {
                tracing::warn!(map, path = %path.display(), "pinned map does not match this build; recreating it");
                fs::remove_file(&path).map_err(io_err("removing stale pinned map", &path))?;
            }
        }
        let bits = protocols.bits();
        let mut loader = EbpfLoader::new();
        for spec in MAPS {
            if let Some(size) = sizes.for_map(spec.name) {
                loader.map_max_entries(spec.name, size);
            }
            loader.map_pin_path(spec.name, pins.map_path(spec.name));
        }
        for map in OWN_MAPS {
            loader.map_pin_path(map, pins.map_path(map));
        }
        loader.override_global(GLOBAL_PROTOS, &bits, true);
        let host_bits = host.map_or(0, |h| h.bits());
        let host_netns = host.map_or(0, |h| h.netns_cookie);
        loader.override_global(GLOBAL_HOST_PROTOS, &host_bits, true);
        loader.override_global(GLOBAL_HOST_NETNS, &host_netns, true);
        let mut ebpf = loader.load(data).map_err(|source| CgroupError::Load {
            name: name.to_owned(),
            scope: pins.scope().to_owned(),
            source: Box::new(source),
        })?;
        for program in CTLB_PROGRAMS {
            let prog = sock_addr(&mut ebpf, program)?;
            prog.load().map_err(|err| match err {
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => CgroupError::Verifier {
                    program,
                    verifier_log: verifier_log.to_string(),
                    source: io_error,
                },
                source => CgroupError::Program { program, source },
            })?;
        }
        tracing::debug!(
            object = name,
            scope = pins.scope(),
            ?protocols,
            ?host,
            "loaded connect-time load balancer"
        );
        Ok(Ctlb {
            ebpf,
            pins: pins.clone(),
            protocols,
        })
    }

    /// The protocols the loaded programs translate.
    pub fn protocols(&self) -> CtlbProtocols {
        self.protocols
    }

    /// Attaches every program to the cgroup v2 directory `cgroup` with pinned links,
    /// replacing the links an earlier load pinned (module docs). Returns how many programs
    /// were attached.
    pub fn attach(&mut self, cgroup: &Path) -> Result<usize, CgroupError> {
        let file = fs::File::open(cgroup).map_err(|source| CgroupError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let dir = links_dir(&self.pins);
        fs::create_dir_all(&dir).map_err(io_err("creating link pin directory", &dir))?;
        for program in CTLB_PROGRAMS {
            let prog = sock_addr(&mut self.ebpf, program)?;
            let attach_err = |source| CgroupError::Attach {
                program,
                cgroup: cgroup.to_owned(),
                source,
            };
            // Single: bpf_link_create takes no flags; cgroup links are multi-program anyway.
            let id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let fd_link = FdLink::try_from(link).map_err(|source| CgroupError::OpenPin {
                path: link_pin(&self.pins, program),
                source,
            })?;
            let final_pin = link_pin(&self.pins, program);
            let new_pin = dir.join(format!("{program}{NEW_SUFFIX}"));
            remove_link_pin(&new_pin)?;
            fd_link.pin(&new_pin).map_err(|source| CgroupError::Pin {
                program,
                path: new_pin.clone(),
                source: Box::new(source),
            })?;
            // The old link (if any) goes when its pin does; ours takes its name.
            remove_link_pin(&final_pin)?;
            fs::rename(&new_pin, &final_pin).map_err(io_err("renaming link pin", &new_pin))?;
        }
        tracing::info!(
            scope = self.pins.scope(),
            cgroup = %cgroup.display(),
            protocols = ?self.protocols,
            "connect-time load balancer attached"
        );
        Ok(CTLB_PROGRAMS.len())
    }
}

fn sock_addr<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut CgroupSockAddr, CgroupError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| CgroupError::Object {
            name: "serval_ctlb".into(),
            reason: format!("no program {program}"),
        })?;
    prog.try_into()
        .map_err(|source| CgroupError::Program { program, source })
}

/// Removes a link pin; the link is detached once nothing else holds it. Ok(false) if none.
fn remove_link_pin(path: &Path) -> Result<bool, CgroupError> {
    if !path.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            drop(pinned.unpin().map_err(io_err("removing link pin", path))?);
        }
        // Not a link (or unreadable): remove the name anyway.
        Err(_) => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("removing link pin", path)(e)),
        },
    }
    Ok(true)
}

/// The programs whose links are pinned in `pins` (attached), sorted.
pub fn attached(pins: &PinScope) -> Result<Vec<String>, CgroupError> {
    let dir = links_dir(pins);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("listing", &dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Detaches every cgroup program of the scope (removes the link pins and their directory).
/// Returns how many were attached. Idempotent.
pub fn detach(pins: &PinScope) -> Result<usize, CgroupError> {
    let mut n = 0;
    for name in attached(pins)? {
        if remove_link_pin(&links_dir(pins).join(&name))? {
            n += 1;
        }
    }
    let dir = links_dir(pins);
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing link pin directory", &dir)(e)),
    }
    if n > 0 {
        tracing::info!(
            scope = pins.scope(),
            programs = n,
            "connect-time load balancer detached"
        );
    }
    Ok(n)
}

/// Removes everything of a scope: the cgroup programs ([`detach`]), then what
/// [`crate::attach::cleanup`] removes (tc and XDP attachments, every pinned map, the
/// directories). This is the crate's `cleanup`. Idempotent.
pub fn cleanup(
    pins: &PinScope,
    netns: Option<&serval_sys::NetNs>,
) -> Result<crate::CleanupReport, crate::AttachError> {
    detach(pins).map_err(|e| crate::AttachError::Io {
        op: "detaching the connect-time load balancer of",
        path: links_dir(pins),
        source: io::Error::other(e.to_string()),
    })?;
    crate::attach::cleanup(pins, netns)
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let mount = fields.next()?;
            (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount))
        })
        .collect();
    // Shortest first: the host's own mount over any bind mount below it.
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_objects_are_valid() {
        for level in [LogLevel::Off, LogLevel::Debug] {
            let (name, data) = ctlb_object(level);
            validate(name, data).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(matches!(
            validate("x.o", &[]),
            Err(CgroupError::Object { .. })
        ));
    }

    #[test]
    fn protocol_bits() {
        assert_eq!(CtlbProtocols::Tcp.bits(), SV_CTLB_F_TCP);
        assert_eq!(CtlbProtocols::TcpUdp.bits(), SV_CTLB_F_TCP | SV_CTLB_F_UDP);
        assert_eq!(
            link_pin(&PinScope::new("n1").unwrap(), "serval_ctlb_connect4"),
            Path::new("/sys/fs/bpf/serval/n1/cgroup/serval_ctlb_connect4")
        );
    }
}
