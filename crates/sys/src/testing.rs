//! Helpers for privileged tests (feature `testing`): unique names and self-deleting
//! namespaces, so tests run in parallel and leave nothing behind even when they panic.

use std::{
    fs::File,
    io::Read,
    ops::Deref,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{NetNs, error::Result, netns::MAX_NETNS_NAME_LEN};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn base36(mut n: u64, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = BASE36[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(digits).unwrap_or_default()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // /dev/urandom never blocks once the system is up; if it is somehow unreadable the pid +
    // counter part of a name still makes it unique within this run.
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    u64::from_le_bytes(bytes)
}

/// A name `PREFIX` + pid + per-process counter + random suffix, at most `max_len` bytes (the
/// prefix is shortened when needed). Unique among concurrently running processes (pid) and
/// within a process (counter); the random part avoids leftovers of a crashed earlier run with
/// a recycled pid. Use `max_len` 15 for interface names.
///
/// # Panics
/// When `max_len` < 10: the pid (5 base-36 digits), counter (3, unique for 46656 names per
/// process) and at least one random digit need 9 bytes, plus one of prefix.
pub fn unique_name(prefix: &str, max_len: usize) -> String {
    assert!(
        max_len >= 10,
        "unique_name needs max_len >= 10, got {max_len}"
    );
    let pid = base36(u64::from(std::process::id()), 5);
    let count = base36(u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)), 3);
    let prefix_len = prefix.len().min(max_len - 9);
    let prefix: String = prefix
        .chars()
        .take_while({
            let mut used = 0;
            move |c| {
                used += c.len_utf8();
                used <= prefix_len
            }
        })
        .collect();
    let random_len = max_len - prefix.len() - pid.len() - count.len();
    let random = base36(random_u64(), 12);
    let random = &random[random.len() - random_len.min(12)..];
    format!("{prefix}{pid}{count}{random}")
}

/// True when running as root; otherwise prints why `test` is skipped and returns false.
/// Use as `if !require_root("veth_connectivity") { return; }`.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "skipping {test}: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network \
         namespaces, bind-mount them under /run/netns and configure links"
    );
    false
}

/// A uniquely named namespace (`PREFIX-pid-counter-random`) that is deleted when dropped,
/// also during a panic. Derefs to [`NetNs`].
#[derive(Debug)]
pub struct NetNsGuard {
    ns: NetNs,
    name: String,
}

impl NetNsGuard {
    /// Creates the namespace.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(&format!("{prefix}-"), 64.min(MAX_NETNS_NAME_LEN));
        let ns = NetNs::create(&name)?;
        Ok(Self { ns, name })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for NetNsGuard {
    type Target = NetNs;

    fn deref(&self) -> &NetNs {
        &self.ns
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(err) = NetNs::delete(&self.name)
            && !err.is_not_found()
        {
            eprintln!(
                "NetNsGuard: could not delete network namespace {}: {err}",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn unique_names_fit_and_differ() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let name = unique_name("svtest", 15);
            assert!(name.len() <= 15, "{name}");
            assert!(name.starts_with("svtest"), "{name}");
            assert!(seen.insert(name.clone()), "duplicate {name}");
        }
        let long = unique_name("a-very-long-prefix-indeed", 15);
        assert_eq!(long.len(), 15, "{long}");
        assert!(long.starts_with("a-very"), "{long}");
        let ns = unique_name("sv-lab-", 64);
        assert!(ns.starts_with("sv-lab-") && ns.len() <= 64, "{ns}");
    }
}
