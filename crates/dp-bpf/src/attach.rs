//! Attaching the tc programs to interfaces inside a network namespace, keeping them attached
//! across agent restarts, and removing everything of a scope.
//!
//! - **TCX** (kernel ≥ 6.6, the default): a BPF link per (interface, hook), pinned at
//!   `SCOPE/links/HOOK/IFNAME`; the pin keeps the program attached after the agent exits. On
//!   the next start, [`Dataplane::attach`] finds the pin and swaps the new program into the
//!   same link (`BPF_LINK_UPDATE`), so there is no moment without a program; a pin whose link
//!   is no longer attached to that interface (the interface was re-created) is replaced.
//! - **clsact fallback** (older kernels, or forced): a direct-action filter on a clsact qdisc,
//!   which stays without any pin; a marker directory `SCOPE/links/HOOK-clsact/IFNAME`
//!   (bpffs holds no regular files) records it
//!   so [`detach`] and [`cleanup`] find it. Re-attaching replaces our filter.
//!
//! Attaching runs on a thread that `setns()`-ed into the namespace (serval-sys
//! [`NetNs::run`]): interface names resolve there and the TCX link is created there.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError},
    },
    util::KernelVersion,
};
use serval_sys::NetNs;

use crate::{
    error::AttachError,
    loader::{Dataplane, PinScope},
    object::{
        PROG_FROM_EP, PROG_HEP_EGRESS, PROG_HEP_INGRESS, PROG_TO_EP, PROG_UPLINK_IN,
        PROG_UPLINK_OUT,
    },
};

/// Where on a workload interface (the host side of its veth) a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// tc ingress of the host-side veth: packets the workload sends.
    FromEndpoint,
    /// tc egress of the host-side veth: packets delivered to the workload.
    ToEndpoint,
    /// tc ingress of a host interface with a host endpoint: traffic to the host
    /// (`serval_hep_ingress`, of the object [`Dataplane::load_hep`] loads). Attached after
    /// every other program of the interface.
    HostIngress,
    /// tc egress of a host interface with a host endpoint: traffic from the host
    /// (`serval_hep_egress`). Attached before every other program of the interface.
    HostEgress,
    /// tc ingress of the node's uplink or VXLAN device (`serval_uplink_in`): service frontends
    /// reached from outside, replies to source-NATed flows. Attached before every other
    /// program of the interface.
    UplinkIngress,
    /// tc egress of the node's uplink or VXLAN device (`serval_uplink_out`): NAT outgoing.
    /// Attached after every other program of the interface.
    UplinkEgress,
}

impl Hook {
    /// The workload hooks (both directions of a pod's host-side veth).
    pub const ALL: [Hook; 2] = [Hook::FromEndpoint, Hook::ToEndpoint];
    /// The host endpoint hooks (both directions of a host interface).
    pub const HOST: [Hook; 2] = [Hook::HostIngress, Hook::HostEgress];
    /// The uplink hooks (both directions of the node's uplink and VXLAN devices).
    pub const UPLINK: [Hook; 2] = [Hook::UplinkIngress, Hook::UplinkEgress];
    /// Every hook ([`attachments`] and [`cleanup`] cover them all).
    pub const EVERY: [Hook; 6] = [
        Hook::FromEndpoint,
        Hook::ToEndpoint,
        Hook::HostIngress,
        Hook::HostEgress,
        Hook::UplinkIngress,
        Hook::UplinkEgress,
    ];

    pub fn program(self) -> &'static str {
        match self {
            Self::FromEndpoint => PROG_FROM_EP,
            Self::ToEndpoint => PROG_TO_EP,
            Self::HostIngress => PROG_HEP_INGRESS,
            Self::HostEgress => PROG_HEP_EGRESS,
            Self::UplinkIngress => PROG_UPLINK_IN,
            Self::UplinkEgress => PROG_UPLINK_OUT,
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromEndpoint | Self::HostIngress | Self::UplinkIngress => TcAttachType::Ingress,
            Self::ToEndpoint | Self::HostEgress | Self::UplinkEgress => TcAttachType::Egress,
        }
    }

    /// The name used in pin file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::FromEndpoint => "from_ep",
            Self::ToEndpoint => "to_ep",
            Self::HostIngress => "hep_in",
            Self::HostEgress => "hep_out",
            Self::UplinkIngress => "uplink_in",
            Self::UplinkEgress => "uplink_out",
        }
    }

    /// Where a new TCX link goes among the interface's programs: host endpoint policy runs
    /// after the other programs on ingress (their NAT undone) and before them on egress
    /// (their NAT not yet done); the uplink programs the other way round (NAT first on
    /// ingress, last on egress); the others go last.
    fn link_order(self) -> LinkOrder {
        match self {
            Self::HostEgress | Self::UplinkIngress => LinkOrder::first(),
            Self::HostIngress | Self::UplinkEgress => LinkOrder::last(),
            Self::FromEndpoint | Self::ToEndpoint => LinkOrder::default(),
        }
    }
}

/// How to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX when the kernel has it (≥ 6.6), else clsact.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl AttachMode {
    fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
                if tcx { Self::Tcx } else { Self::Clsact }
            }
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

/// One program attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub hook: Hook,
    /// [`AttachMode::Tcx`] or [`AttachMode::Clsact`].
    pub mode: AttachMode,
    /// A pinned TCX link from an earlier run was kept (its program replaced by ours).
    pub reused: bool,
}

/// bpffs refuses names containing '.', which interface names may have (VLANs: `eth0.100`);
/// ':' can never be in an interface name, so it stands in for '.'.
fn escape_ifname(ifname: &str) -> String {
    ifname.replace('.', ":")
}

fn unescape_ifname(name: &str) -> String {
    name.replace(':', ".")
}

/// `SCOPE/links/HOOK` (TCX link pins) or `SCOPE/links/HOOK-clsact` (clsact markers).
fn hook_dir(pins: &PinScope, hook: Hook, mode: AttachMode) -> PathBuf {
    match mode {
        AttachMode::Clsact => pins.links_dir().join(format!("{}-clsact", hook.name())),
        _ => pins.links_dir().join(hook.name()),
    }
}

fn link_pin(pins: &PinScope, ifname: &str, hook: Hook) -> PathBuf {
    hook_dir(pins, hook, AttachMode::Tcx).join(escape_ifname(ifname))
}

fn clsact_marker(pins: &PinScope, ifname: &str, hook: Hook) -> PathBuf {
    hook_dir(pins, hook, AttachMode::Clsact).join(escape_ifname(ifname))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AttachError {
    let path = path.to_owned();
    move |source| AttachError::Io { op, path, source }
}

fn remove_if_exists(path: &Path, op: &'static str) -> Result<bool, AttachError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_err(op, path)(err)),
    }
}

/// Whether `program` is among the TCX programs of `ifname` (call inside the namespace).
fn tcx_has(ifname: &str, attach_type: TcAttachType, program_id: u32) -> Result<bool, ProgramError> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, attach_type)?;
    Ok(programs.iter().any(|p| p.id() == program_id))
}

/// What a TCX attach inside the namespace did.
enum TcxOutcome {
    /// The pinned link was still attached to the interface; it now runs our program.
    Reused,
    /// A new link (the pinned one, if any, was stale).
    New {
        link: SchedClassifierLink,
        stale_pin: bool,
    },
}

impl Dataplane {
    /// Attaches the program of `hook` to `ifname` in `netns`. With a pin scope the attachment
    /// is pinned (outlives this process); without one it lasts as long as this [`Dataplane`].
    ///
    /// Everything on bpffs (opening, creating and removing pins) happens on the caller's
    /// thread; only interface resolution, attaching and querying run inside `netns`.
    pub fn attach(
        &mut self,
        netns: &NetNs,
        ifname: &str,
        hook: Hook,
        mode: AttachMode,
    ) -> Result<Attachment, AttachError> {
        let mode = mode.resolve();
        let pins = self.pins.clone();
        if let Some(pins) = &pins {
            let dir = hook_dir(pins, hook, mode);
            fs::create_dir_all(&dir).map_err(io_err("creating link pin directory", &dir))?;
        }
        let netns_label = netns.label().to_string();
        let pin = pins.as_ref().map(|p| link_pin(p, ifname, hook));
        let existing = match pin
            .as_deref()
            .filter(|p| mode == AttachMode::Tcx && p.exists())
        {
            Some(path) => Some(open_pinned_link(path)?),
            None => None,
        };
        let program = self
            .program_mut(hook.program())
            .map_err(|source| AttachError::Program {
                hook: hook.name(),
                source,
            })?;

        let in_netns = |f: &mut (dyn FnMut() -> Result<TcxOutcome, AttachError> + Send)| {
            netns.run(f).map_err(|source| AttachError::Netns {
                netns: netns_label.clone(),
                ifname: ifname.to_owned(),
                source,
            })?
        };
        let mut existing = existing;
        let outcome = match mode {
            AttachMode::Clsact => in_netns(&mut || {
                attach_clsact(program, ifname, hook, &netns_label).map(|()| TcxOutcome::Reused)
            })
            .map(|_| None)?,
            _ => Some(in_netns(&mut || {
                attach_tcx(program, ifname, hook, existing.take(), &netns_label)
            })?),
        };

        let mut reused = false;
        match outcome {
            None => {
                if let Some(pins) = &pins {
                    let marker = clsact_marker(pins, ifname, hook);
                    match fs::create_dir(&marker) {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(err) => return Err(io_err("creating clsact marker", &marker)(err)),
                    }
                }
            }
            Some(TcxOutcome::Reused) => reused = true,
            Some(TcxOutcome::New { link, stale_pin }) => match &pin {
                Some(path) => {
                    if stale_pin {
                        tracing::warn!(
                            ifname,
                            path = %path.display(),
                            "pinned link was not attached to the interface any more (re-created?); replaced it"
                        );
                        remove_if_exists(path, "removing stale link pin")?;
                    }
                    let fd_link =
                        FdLink::try_from(link).map_err(|source| AttachError::OpenPin {
                            path: path.clone(),
                            source,
                        })?;
                    // Dropping the returned PinnedLink closes our fd; the pin keeps the link.
                    fd_link.pin(path).map_err(|source| AttachError::Pin {
                        program: hook.program(),
                        ifname: ifname.to_owned(),
                        path: path.clone(),
                        source,
                    })?;
                }
                None => self.unpinned_links.push(link),
            },
        }
        tracing::info!(
            ifname,
            hook = hook.name(),
            mode = mode.name(),
            reused,
            netns = %netns_label,
            "attached BPF program"
        );
        Ok(Attachment {
            ifname: ifname.to_owned(),
            hook,
            mode,
            reused,
        })
    }
}

fn open_pinned_link(path: &Path) -> Result<SchedClassifierLink, AttachError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| AttachError::OpenPin {
        path: path.to_owned(),
        source,
    })?;
    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| AttachError::OpenPin {
        path: path.to_owned(),
        source,
    })
}

/// TCX attach inside the namespace: keep `existing` (a pinned link) if it is still attached
/// to `ifname`, swapping our program in; else create a new link.
fn attach_tcx(
    program: &mut SchedClassifier,
    ifname: &str,
    hook: Hook,
    existing: Option<SchedClassifierLink>,
    netns: &str,
) -> Result<TcxOutcome, AttachError> {
    let attach_type = hook.attach_type();
    let err = |source| AttachError::Attach {
        program: hook.program(),
        ifname: ifname.to_owned(),
        hook: hook.name(),
        netns: netns.to_owned(),
        mode: "tcx",
        source,
    };
    let program_id = program.info().map_err(err)?.id();
    let stale_pin = existing.is_some();
    if let Some(link) = existing {
        match program.attach_to_link(link) {
            Ok(id) => {
                // Our handle on the link is not needed: the pin holds it.
                drop(program.take_link(id).map_err(err)?);
                let attached = tcx_has(ifname, attach_type, program_id).map_err(|source| {
                    AttachError::Query {
                        ifname: ifname.to_owned(),
                        netns: netns.to_owned(),
                        source,
                    }
                })?;
                if attached {
                    return Ok(TcxOutcome::Reused);
                }
            }
            // ENOLINK: the link's interface is gone ("link has been severed").
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {}
            Err(source) => {
                return Err(AttachError::Update {
                    path: PathBuf::from(ifname),
                    source,
                });
            }
        }
    }
    let id = program
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(hook.link_order()),
        )
        .map_err(err)?;
    let link = program.take_link(id).map_err(err)?;
    Ok(TcxOutcome::New { link, stale_pin })
}

/// clsact attach inside the namespace: replaces any filter of ours on that hook.
fn attach_clsact(
    program: &mut SchedClassifier,
    ifname: &str,
    hook: Hook,
    netns: &str,
) -> Result<(), AttachError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(AttachError::Clsact {
                ifname: ifname.to_owned(),
                netns: netns.to_owned(),
                source,
            });
        }
    }
    detach_clsact_filters(ifname, hook, netns)?;
    let err = |source| AttachError::Attach {
        program: hook.program(),
        ifname: ifname.to_owned(),
        hook: hook.name(),
        netns: netns.to_owned(),
        mode: "clsact",
        source,
    };
    let id = program
        .attach_with_options(
            ifname,
            hook.attach_type(),
            TcAttachOptions::Netlink(tc::NlOptions::default()),
        )
        .map_err(err)?;
    let link = program.take_link(id).map_err(err)?;
    // A netlink filter stays in the kernel without any handle; dropping the link would remove
    // it, so it is forgotten on purpose and found again by name (detach_clsact_filters).
    std::mem::forget(link);
    Ok(())
}

/// Removes our tc filters (by program name) from `ifname`; inside the namespace.
fn detach_clsact_filters(ifname: &str, hook: Hook, netns: &str) -> Result<(), AttachError> {
    match tc::qdisc_detach_program(ifname, hook.attach_type(), hook.program()) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AttachError::DetachClsact {
            ifname: ifname.to_owned(),
            netns: netns.to_owned(),
            source,
        }),
    }
}

/// Detaches the program of `hook` from `ifname` (pinned TCX link and/or clsact filter).
/// Returns whether anything was attached. `netns` is needed for clsact attachments only
/// (a TCX link is released by removing its pin, wherever the interface is); without it a
/// clsact record is dropped with a warning and its filter left to die with its interface.
pub fn detach(
    pins: &PinScope,
    netns: Option<&NetNs>,
    ifname: &str,
    hook: Hook,
) -> Result<bool, AttachError> {
    let mut found = false;
    let pin = link_pin(pins, ifname, hook);
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|source| AttachError::OpenPin {
            path: pin.clone(),
            source,
        })?;
        // Closing the last reference (our fd, after the pin is gone) detaches the link.
        drop(pinned.unpin().map_err(io_err("removing link pin", &pin))?);
        found = true;
    }
    let marker = clsact_marker(pins, ifname, hook);
    if marker.exists() {
        match netns {
            Some(netns) => {
                let label = netns.label().to_string();
                netns
                    .run(|| detach_clsact_filters(ifname, hook, &label))
                    .map_err(|source| AttachError::Netns {
                        netns: label.clone(),
                        ifname: ifname.to_owned(),
                        source,
                    })??;
            }
            // Without the namespace the filter cannot be reached (it goes away with its
            // interface or namespace); the record is removed so the scope can be.
            None => tracing::warn!(
                ifname,
                hook = hook.name(),
                "no namespace given: forgetting a clsact attachment without removing its filter"
            ),
        }
        match fs::remove_dir(&marker) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("removing clsact marker", &marker)(err)),
        }
        found = true;
    }
    if found {
        tracing::info!(
            ifname,
            hook = hook.name(),
            scope = pins.scope(),
            "detached BPF program"
        );
    }
    Ok(found)
}

/// The attachments recorded under a scope: (interface, hook, mode), sorted.
pub fn attachments(pins: &PinScope) -> Result<Vec<(String, Hook, AttachMode)>, AttachError> {
    let mut found = Vec::new();
    for hook in Hook::EVERY {
        for mode in [AttachMode::Tcx, AttachMode::Clsact] {
            let dir = hook_dir(pins, hook, mode);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err("listing", &dir)(err)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("listing", &dir))?;
                if let Some(name) = entry.file_name().to_str() {
                    found.push((unescape_ifname(name), hook, mode));
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.0, a.1.name(), a.2.name()).cmp(&(&b.0, b.1.name(), b.2.name())));
    Ok(found)
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub detached: Vec<(String, Hook)>,
    pub maps_removed: usize,
}

/// Removes every attachment and pin of a scope and its directory (switching dataplanes,
/// `lab down`). `netns` is where clsact attachments live (not needed for TCX). Idempotent.
pub fn cleanup(pins: &PinScope, netns: Option<&NetNs>) -> Result<CleanupReport, AttachError> {
    let mut report = CleanupReport::default();
    // The XDP links of host interfaces (crate::xdp) live under links/ too.
    match crate::xdp::cleanup_links(pins) {
        Ok(ifaces) if !ifaces.is_empty() => {
            tracing::info!(scope = pins.scope(), interfaces = ?ifaces, "detached XDP programs")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(scope = pins.scope(), error = %e, "could not detach the XDP programs")
        }
    }
    for (ifname, hook, _) in attachments(pins)? {
        if detach(pins, netns, &ifname, hook)? {
            report.detached.push((ifname, hook));
        }
    }
    let maps = pins.maps_dir();
    match fs::read_dir(&maps) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err("listing", &maps))?;
                if remove_if_exists(&entry.path(), "removing pinned map")? {
                    report.maps_removed += 1;
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("listing", &maps)(err)),
    }
    let mut dirs = Vec::new();
    for hook in Hook::EVERY {
        dirs.push(hook_dir(pins, hook, AttachMode::Tcx));
        dirs.push(hook_dir(pins, hook, AttachMode::Clsact));
    }
    dirs.extend([pins.links_dir(), maps, pins.dir()]);
    for dir in dirs {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("removing pin directory", &dir)(err)),
        }
    }
    tracing::info!(
        scope = pins.scope(),
        detached = report.detached.len(),
        maps = report.maps_removed,
        "removed BPF pins and attachments"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_avoid_dots_and_round_trip() {
        let scope = PinScope::new("n1").unwrap();
        let pin = link_pin(&scope, "eth0.100", Hook::FromEndpoint);
        assert_eq!(
            pin,
            Path::new("/sys/fs/bpf/serval/n1/links/from_ep/eth0:100")
        );
        let marker = clsact_marker(&scope, "veth1", Hook::ToEndpoint);
        assert_eq!(
            marker,
            Path::new("/sys/fs/bpf/serval/n1/links/to_ep-clsact/veth1")
        );
        assert_eq!(unescape_ifname(&escape_ifname("a.b.c")), "a.b.c");
    }
}
