//! The XDP program of host interfaces (`bpf/serval_xdp.c`, FelixConfiguration `xdpEnabled`):
//! loading it with its own maps pinned in the node's scope, attaching it to host interfaces
//! with pinned links, the blocklist / failsafe map writers, its counters and test runs.
//!
//! Pin layout, for scope `S` (next to the tc pins of [`crate::loader`]):
//!
//! ```text
//! /sys/fs/bpf/serval/S/maps/sv_xdp_bl, sv_xdp_fs, sv_xdp_stats
//! /sys/fs/bpf/serval/S/links/xdp/IFNAME        XDP links (programs stay attached)
//! ```
//!
//! Attaching: native (driver) mode first; when the driver refuses it (no XDP support), generic
//! (SKB) mode. An interface keeps the mode its link was created with. On the next start the
//! pinned link is re-pointed at the new program (`BPF_LINK_UPDATE`), so the interface is never
//! without its program; a pin whose interface is gone (re-created) is replaced.
//! [`crate::attach::cleanup`] also removes the XDP links of its scope.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray},
    programs::{
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use serval_sys::NetNs;

use crate::{
    abi::{SV_XDP_STATS, XdpBlKey, XdpBlMatch, XdpBlVal, XdpFsKey, XdpFsMatch, xdp_stat_name},
    error::{LoadError, MapsError, ObjectError},
    loader::{LoadOptions, PinScope, ensure_bpffs},
    object::{MAP_XDP_BLOCKLIST, MAP_XDP_FAILSAFE, MAP_XDP_STATS, PROG_XDP, xdp_object},
};

/// The XDP object's maps.
pub const XDP_MAPS: [&str; 3] = [MAP_XDP_BLOCKLIST, MAP_XDP_FAILSAFE, MAP_XDP_STATS];

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// What went wrong with the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("loading the XDP object: {source}")]
    Load {
        #[source]
        source: LoadError,
    },
    #[error("the XDP program {program} was rejected by the verifier:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        verifier_log: String,
        #[source]
        source: io::Error,
    },
    #[error("loading the XDP program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("creating the XDP maps (pins under {pins}); is bpffs mounted and the agent root?")]
    Maps {
        pins: String,
        #[source]
        source: aya::EbpfError,
    },
    #[error(transparent)]
    Map(#[from] MapsError),
    #[error(
        "attaching XDP to {ifname} in {netns} ({mode} mode); check the interface exists and no other XDP program owns it"
    )]
    Attach {
        ifname: String,
        netns: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the XDP link of {ifname} could not be pinned at {path} (kernel without bpf_link for XDP, < 5.9?)"
    )]
    Pin {
        ifname: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("opening the pinned XDP link {path}; remove it if it is stale")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("entering network namespace {netns} for {ifname}")]
    Netns {
        netns: String,
        ifname: String,
        #[source]
        source: serval_sys::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_TEST_RUN of {program} on a {len}-byte packet")]
    TestRun {
        program: &'static str,
        len: usize,
        #[source]
        source: ProgramError,
    },
}

/// Where the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver, before any socket buffer exists.
    Native,
    /// Generic XDP in the stack (drivers without XDP support).
    Generic,
    /// A pinned link of an earlier run, re-pointed at this program (its mode unchanged).
    Kept,
}

impl XdpAttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Kept => "kept",
        }
    }
}

/// The XDP counters (`SV_XDP_*`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStats(pub [u64; SV_XDP_STATS as usize]);

impl XdpStats {
    pub fn get(&self, stat: u32) -> u64 {
        self.0.get(stat as usize).copied().unwrap_or(0)
    }

    /// Packets dropped (every drop counter summed).
    pub fn drops(&self) -> u64 {
        self.get(crate::abi::SV_XDP_DROP_BLOCKLIST) + self.get(crate::abi::SV_XDP_DROP_MALFORMED)
    }

    /// (name, count) of every non-zero counter.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        (0..SV_XDP_STATS)
            .filter(|s| self.get(*s) > 0)
            .map(|s| (xdp_stat_name(s), self.get(s)))
            .collect()
    }
}

/// Blocklist contents: (prefix length, match) -> value.
pub type Blocklist = HashMap<(u32, XdpBlMatch), XdpBlVal>;
/// Failsafe contents: (prefix length, match) -> 1.
pub type FailsafeSet = HashMap<(u32, XdpFsMatch), u32>;

/// The loaded XDP program and its maps. Dropping it closes our handles only: pinned maps and
/// pinned links stay.
#[derive(Debug)]
pub struct XdpDataplane {
    ebpf: Ebpf,
    pins: Option<PinScope>,
    /// Attachments without a pin scope (tests), detached when this is dropped.
    unpinned: Vec<XdpLink>,
}

fn links_dir(pins: &PinScope) -> PathBuf {
    pins.links_dir().join("xdp")
}

fn link_pin(pins: &PinScope, ifname: &str) -> PathBuf {
    // bpffs refuses '.', which interface names may contain; ':' never appears in them.
    links_dir(pins).join(ifname.replace('.', ":"))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> XdpError {
    let path = path.to_owned();
    move |source| XdpError::Io { op, path, source }
}

impl XdpDataplane {
    /// Loads the embedded XDP object for `opts.log_level`, its maps created or reopened from
    /// pins under `opts.pins` (a pinned map of another shape is recreated empty).
    pub fn load(opts: &LoadOptions) -> Result<Self, XdpError> {
        let (name, data) = xdp_object(opts.log_level);
        let obj = aya_obj::Object::parse(data).map_err(|source| ObjectError::Parse {
            name: name.to_owned(),
            source,
        })?;
        if !obj.programs.contains_key(PROG_XDP) {
            return Err(ObjectError::MissingProgram {
                name: name.to_owned(),
                program: PROG_XDP,
            }
            .into());
        }
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &opts.pins {
            ensure_bpffs(pins.bpffs()).map_err(|source| XdpError::Load { source })?;
            let dir = pins.maps_dir();
            fs::create_dir_all(&dir).map_err(io_err("creating pin directory", &dir))?;
            for map in XDP_MAPS {
                let Some(want) = obj.maps.get(map) else {
                    return Err(ObjectError::MissingMap {
                        name: name.to_owned(),
                        map,
                    }
                    .into());
                };
                let path = pins.map_path(map);
                if let Ok(info) = MapInfo::from_pin(&path) {
                    let same = info.map_type().map(|t| t as u32).ok() == Some(want.map_type())
                        && info.key_size() == want.key_size()
                        && info.value_size() == want.value_size()
                        && info.max_entries() == want.max_entries()
                        && info.map_flags() == want.map_flags();
                    if !same {
                        tracing::warn!(map, path = %path.display(), "pinned XDP map does not match this build; recreating it empty");
                        fs::remove_file(&path)
                            .map_err(io_err("removing stale pinned map", &path))?;
                    }
                }
                loader.map_pin_path(map, path);
            }
        }
        let mut ebpf = loader.load(data).map_err(|source| XdpError::Maps {
            pins: opts
                .pins
                .as_ref()
                .map_or("(none)".into(), |p| p.maps_dir().display().to_string()),
            source,
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .ok_or(ObjectError::MissingProgram {
                name: name.to_owned(),
                program: PROG_XDP,
            })?
            .try_into()
            .map_err(|source| XdpError::Program {
                program: PROG_XDP,
                source,
            })?;
        prog.load().map_err(|err| match err {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => XdpError::Verifier {
                program: PROG_XDP,
                verifier_log: verifier_log.to_string(),
                source: io_error,
            },
            source => XdpError::Program {
                program: PROG_XDP,
                source,
            },
        })?;
        Ok(Self {
            ebpf,
            pins: opts.pins.clone(),
            unpinned: Vec::new(),
        })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROG_XDP)
            .ok_or(ObjectError::MissingProgram {
                name: PROG_XDP.to_owned(),
                program: PROG_XDP,
            })?
            .try_into()
            .map_err(|source| XdpError::Program {
                program: PROG_XDP,
                source,
            })
    }

    /// Attaches the program to `ifname` in `netns`: re-points a pinned link of an earlier run,
    /// else native mode, else generic mode. With a pin scope the link is pinned (outlives this
    /// process); without one it lasts as long as this [`XdpDataplane`].
    pub fn attach(&mut self, netns: &NetNs, ifname: &str) -> Result<XdpAttachMode, XdpError> {
        let pins = self.pins.clone();
        let pin = pins.as_ref().map(|p| link_pin(p, ifname));
        if let Some(pins) = &pins {
            let dir = links_dir(pins);
            fs::create_dir_all(&dir).map_err(io_err("creating link pin directory", &dir))?;
        }
        let existing = match pin.as_deref().filter(|p| p.exists()) {
            Some(path) => {
                let pinned = PinnedLink::from_pin(path).map_err(|e| XdpError::OpenPin {
                    path: path.to_owned(),
                    source: Box::new(e),
                })?;
                let link =
                    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| XdpError::OpenPin {
                        path: path.to_owned(),
                        source: Box::new(e),
                    })?;
                Some(link)
            }
            None => None,
        };
        let label = netns.label().to_string();
        let program = self.program_mut()?;
        let name = ifname.to_owned();
        let label2 = label.clone();
        let outcome = netns
            .run(move || attach_in_netns(program, &name, existing, &label2))
            .map_err(|source| XdpError::Netns {
                netns: label.clone(),
                ifname: ifname.to_owned(),
                source,
            })??;
        let (mode, link, stale) = match outcome {
            Attached::Kept => (XdpAttachMode::Kept, None, false),
            Attached::New { mode, link, stale } => (mode, Some(link), stale),
        };
        if let Some(link) = link {
            match &pin {
                Some(path) => {
                    if stale {
                        tracing::warn!(ifname, path = %path.display(), "pinned XDP link was not attached any more (interface re-created?); replaced it");
                        match fs::remove_file(path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(io_err("removing stale XDP link pin", path)(e)),
                        }
                    }
                    let fd = FdLink::try_from(link).map_err(|e| XdpError::Pin {
                        ifname: ifname.to_owned(),
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                    fd.pin(path).map_err(|e| XdpError::Pin {
                        ifname: ifname.to_owned(),
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                }
                None => self.unpinned.push(link),
            }
        }
        tracing::info!(ifname, mode = mode.name(), netns = %label, "attached XDP program");
        Ok(mode)
    }

    /// Runs the program once on `packet` (starting at the Ethernet header); the ingress
    /// interface is the caller namespace's loopback (ifindex 1). Returns the XDP verdict.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<u32, XdpError> {
        let program = self.program_mut()?;
        let mut out = vec![0u8; packet.len() + 256];
        let r = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|source| XdpError::TestRun {
                program: PROG_XDP,
                len: packet.len(),
                source,
            })?;
        Ok(r.return_value)
    }

    /// Runs the program `repeat` times on `packet` in the kernel; the verdict and the
    /// kernel's average time per run (for benchmarks; never asserted in tests).
    pub fn test_run_timed(
        &mut self,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), XdpError> {
        let program = self.program_mut()?;
        let mut out = vec![0u8; packet.len() + 256];
        let r = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| XdpError::TestRun {
                program: PROG_XDP,
                len: packet.len(),
                source,
            })?;
        Ok((r.return_value, r.duration))
    }

    fn map(&mut self, name: &'static str) -> Result<&mut Map, MapsError> {
        self.ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })
    }

    fn blocklist_map(&mut self) -> Result<LpmTrie<&mut MapData, XdpBlMatch, XdpBlVal>, MapsError> {
        LpmTrie::try_from(self.map(MAP_XDP_BLOCKLIST)?).map_err(|source| MapsError::Map {
            op: "opening",
            map: MAP_XDP_BLOCKLIST,
            source,
        })
    }

    fn failsafe_map(&mut self) -> Result<LpmTrie<&mut MapData, XdpFsMatch, u32>, MapsError> {
        LpmTrie::try_from(self.map(MAP_XDP_FAILSAFE)?).map_err(|source| MapsError::Map {
            op: "opening",
            map: MAP_XDP_FAILSAFE,
            source,
        })
    }

    pub fn set_block(&mut self, key: &XdpBlKey, val: &XdpBlVal) -> Result<(), MapsError> {
        self.blocklist_map()?
            .insert(key, *val, 0)
            .map_err(map_err("writing", MAP_XDP_BLOCKLIST))
    }

    pub fn remove_block(&mut self, key: &XdpBlKey) -> Result<bool, MapsError> {
        removed(self.blocklist_map()?.remove(key), MAP_XDP_BLOCKLIST)
    }

    pub fn set_failsafe(&mut self, key: &XdpFsKey) -> Result<(), MapsError> {
        self.failsafe_map()?
            .insert(key, 1, 0)
            .map_err(map_err("writing", MAP_XDP_FAILSAFE))
    }

    pub fn remove_failsafe(&mut self, key: &XdpFsKey) -> Result<bool, MapsError> {
        removed(self.failsafe_map()?.remove(key), MAP_XDP_FAILSAFE)
    }

    /// Every blocklist entry in the kernel.
    pub fn blocklist(&mut self) -> Result<Blocklist, MapsError> {
        let m = self.blocklist_map()?;
        let mut out = Blocklist::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err("reading", MAP_XDP_BLOCKLIST))?;
            out.insert((k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }

    /// Every failsafe entry in the kernel.
    pub fn failsafe(&mut self) -> Result<FailsafeSet, MapsError> {
        let m = self.failsafe_map()?;
        let mut out = FailsafeSet::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err("reading", MAP_XDP_FAILSAFE))?;
            out.insert((k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }

    /// The counters, summed over CPUs.
    pub fn stats(&mut self) -> Result<XdpStats, MapsError> {
        let m = PerCpuArray::<&mut MapData, u64>::try_from(self.map(MAP_XDP_STATS)?).map_err(
            |source| MapsError::Map {
                op: "opening",
                map: MAP_XDP_STATS,
                source,
            },
        )?;
        let mut stats = XdpStats::default();
        for (i, slot) in stats.0.iter_mut().enumerate() {
            let per_cpu = m
                .get(&(i as u32), 0)
                .map_err(map_err("reading", MAP_XDP_STATS))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(stats)
    }
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { op, map, source }
}

fn removed(r: Result<(), MapError>, map: &'static str) -> Result<bool, MapsError> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) => Err(MapsError::Map {
            op: "deleting from",
            map,
            source,
        }),
    }
}

enum Attached {
    Kept,
    New {
        mode: XdpAttachMode,
        link: XdpLink,
        stale: bool,
    },
}

/// Inside the namespace: keep `existing` if its interface is still there, else a new link in
/// native mode, falling back to generic mode.
fn attach_in_netns(
    program: &mut Xdp,
    ifname: &str,
    existing: Option<XdpLink>,
    netns: &str,
) -> Result<Attached, XdpError> {
    let stale = existing.is_some();
    if let Some(link) = existing {
        match program.attach_to_link(link) {
            Ok(id) => {
                // The pin holds the link; our handle is not needed.
                drop(program.take_link(id).map_err(|source| XdpError::Attach {
                    ifname: ifname.to_owned(),
                    netns: netns.to_owned(),
                    mode: "kept",
                    source,
                })?);
                return Ok(Attached::Kept);
            }
            // ENOLINK: the link's interface is gone.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {}
            Err(source) => {
                return Err(XdpError::Attach {
                    ifname: ifname.to_owned(),
                    netns: netns.to_owned(),
                    mode: "kept",
                    source,
                });
            }
        }
    }
    let (mode, id) = match program.attach(ifname, XdpMode::Driver) {
        Ok(id) => (XdpAttachMode::Native, id),
        Err(native) => {
            tracing::debug!(ifname, error = %native, "native XDP refused; trying generic mode");
            let id = program
                .attach(ifname, XdpMode::Skb)
                .map_err(|source| XdpError::Attach {
                    ifname: ifname.to_owned(),
                    netns: netns.to_owned(),
                    mode: "generic",
                    source,
                })?;
            (XdpAttachMode::Generic, id)
        }
    };
    let link = program.take_link(id).map_err(|source| XdpError::Attach {
        ifname: ifname.to_owned(),
        netns: netns.to_owned(),
        mode: mode.name(),
        source,
    })?;
    Ok(Attached::New { mode, link, stale })
}

/// The interfaces with a pinned XDP link in `pins`, sorted.
pub fn attachments(pins: &PinScope) -> Result<Vec<String>, XdpError> {
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
            out.push(name.replace(':', "."));
        }
    }
    out.sort();
    Ok(out)
}

/// Detaches the XDP program from `ifname` (removes its pinned link). Returns whether it was
/// attached.
pub fn detach(pins: &PinScope, ifname: &str) -> Result<bool, XdpError> {
    let pin = link_pin(pins, ifname);
    if !pin.exists() {
        return Ok(false);
    }
    let pinned = PinnedLink::from_pin(&pin).map_err(|e| XdpError::OpenPin {
        path: pin.clone(),
        source: Box::new(e),
    })?;
    // Closing the last reference (our fd, after the pin is gone) detaches the link.
    drop(
        pinned
            .unpin()
            .map_err(io_err("removing XDP link pin", &pin))?,
    );
    tracing::info!(ifname, scope = pins.scope(), "detached XDP program");
    Ok(true)
}

/// Detaches every XDP link of `pins` and removes its directory; returns the interfaces.
pub fn cleanup_links(pins: &PinScope) -> Result<Vec<String>, XdpError> {
    let ifaces = attachments(pins)?;
    for ifname in &ifaces {
        detach(pins, ifname)?;
    }
    let dir = links_dir(pins);
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing XDP link directory", &dir)(e)),
    }
    Ok(ifaces)
}

/// Removes the pinned XDP maps of `pins` (after [`cleanup_links`]; xdpEnabled turned off).
pub fn remove_maps(pins: &PinScope) -> Result<usize, XdpError> {
    let mut n = 0;
    for map in XDP_MAPS {
        let path = pins.map_path(map);
        match fs::remove_file(&path) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing pinned XDP map", &path)(e)),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_xdp_objects_have_the_program_and_maps() {
        for level in [crate::LogLevel::Off, crate::LogLevel::Debug] {
            let (name, data) = xdp_object(level);
            let obj = aya_obj::Object::parse(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(obj.programs.contains_key(PROG_XDP), "{name}");
            for map in XDP_MAPS {
                assert!(obj.maps.contains_key(map), "{name}: {map}");
            }
            let bl = &obj.maps[MAP_XDP_BLOCKLIST];
            assert_eq!(bl.key_size() as usize, size_of::<XdpBlKey>());
            assert_eq!(bl.value_size() as usize, size_of::<XdpBlVal>());
            let fs = &obj.maps[MAP_XDP_FAILSAFE];
            assert_eq!(fs.key_size() as usize, size_of::<XdpFsKey>());
        }
    }

    #[test]
    fn link_pins_avoid_dots() {
        let scope = PinScope::new("n1").unwrap();
        assert_eq!(
            link_pin(&scope, "eth0.100"),
            Path::new("/sys/fs/bpf/serval/n1/links/xdp/eth0:100")
        );
    }
}
