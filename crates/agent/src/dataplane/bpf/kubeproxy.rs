//! Kube-proxy coexistence for the eBPF driver (FelixConfiguration
//! `bpfKubeProxyIptablesCleanupEnabled`, default true).
//!
//! With the eBPF dataplane active and the setting true, the driver removes kube-proxy's state
//! from the node, as Calico's Felix does in BPF mode (the eBPF programs NAT services at tc,
//! before netfilter, so kube-proxy's rules would only compete):
//!
//! - **iptables** (the `iptables` / `ip6tables` on PATH, whichever backend they are), tables
//!   `nat` and `filter`: every chain named `KUBE-*` — KUBE-SERVICES, KUBE-NODEPORTS,
//!   KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-SVC-*, KUBE-SEP-*, KUBE-EXT-*, KUBE-FW-*,
//!   KUBE-PROXY-*, KUBE-FORWARD, … — except kubelet's `KUBE-KUBELET-CANARY`, and every rule
//!   of another chain that jumps (`-j`/`-g`) to one of them. One `iptables-restore --noflush`
//!   transaction per table and family: the jumps are deleted, then the chains flushed, then
//!   deleted. Other chains and rules are untouched. (The `mangle` table holds only
//!   kube-proxy's and kubelet's canaries and hints; it is left alone.)
//! - **nftables**: the tables `ip kube-proxy` and `ip6 kube-proxy` (kube-proxy's nftables
//!   mode), deleted in one `nft -f` transaction if present.
//!
//! The cleanup runs at the first apply after the driver is opened and at every resync (a
//! kube-proxy still running re-creates its rules; they are removed again). With the setting
//! false nothing of kube-proxy's is read or touched, and the eBPF dataplane works regardless:
//! service traffic from workloads is NATed by the tc programs before netfilter sees it.

use std::fmt::Write as _;

use serval_dp_iptables::{Exec, ExecError};

/// kube-proxy chain prefix, and the chains with it that are not kube-proxy's.
const PREFIX: &str = "KUBE-";
const NOT_KUBE_PROXY: [&str; 1] = ["KUBE-KUBELET-CANARY"];
const TABLES: [&str; 2] = ["nat", "filter"];

/// Why the cleanup failed (the eBPF dataplane itself is not affected; it is retried at the
/// next resync).
#[derive(Debug, thiserror::Error)]
pub enum KubeProxyError {
    #[error(
        "removing kube-proxy's {family} {table} rules: {source}; set FelixConfiguration \
         bpfKubeProxyIptablesCleanupEnabled: false to leave them alone"
    )]
    Iptables {
        family: &'static str,
        table: &'static str,
        #[source]
        source: ExecError,
    },
    #[error(
        "removing kube-proxy's nftables tables: {source}; set FelixConfiguration \
         bpfKubeProxyIptablesCleanupEnabled: false to leave them alone"
    )]
    Nft {
        #[source]
        source: ExecError,
    },
}

/// What one cleanup removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeProxyCleanup {
    /// (family, table, chain) of every chain removed.
    pub chains: Vec<(&'static str, &'static str, String)>,
    /// Jump rules removed from other chains.
    pub jumps: usize,
    /// nftables tables removed (`ip kube-proxy`, `ip6 kube-proxy`).
    pub nft_tables: Vec<String>,
}

impl KubeProxyCleanup {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps == 0 && self.nft_tables.is_empty()
    }
}

fn is_kube_proxy_chain(name: &str) -> bool {
    name.starts_with(PREFIX) && !NOT_KUBE_PROXY.contains(&name)
}

/// The target of a rule (`-j X` or `-g X`), from `iptables-save` output.
fn target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// The `iptables-restore --noflush` input removing kube-proxy's chains of one table from
/// `save` (the output of `iptables-save -t TABLE`), or `None` if there are none. Pure.
pub fn cleanup_input(table: &str, save: &str) -> Option<(String, Vec<String>, usize)> {
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    let mut in_table = false;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if is_kube_proxy_chain(name) {
                chains.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            if !is_kube_proxy_chain(chain) && target(rule).is_some_and(is_kube_proxy_chain) {
                jumps.push(rule.to_string());
            }
        }
    }
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    for rule in &jumps {
        let _ = writeln!(out, "-D {rule}");
    }
    for c in &chains {
        let _ = writeln!(out, "-F {c}");
    }
    for c in &chains {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some((out, chains, jumps.len()))
}

/// `nft -f` input deleting kube-proxy's nftables tables listed in `tables` (the output of
/// `nft list tables`), or `None`. Pure.
pub fn nft_input(tables: &str) -> Option<(String, Vec<String>)> {
    let mut found = Vec::new();
    for line in tables.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family @ ("ip" | "ip6"), "kube-proxy"] = words.as_slice() {
            found.push(format!("{family} kube-proxy"));
        }
    }
    if found.is_empty() {
        return None;
    }
    let mut out = String::new();
    for t in &found {
        let _ = writeln!(out, "delete table {t}");
    }
    Some((out, found))
}

/// Removes kube-proxy's iptables chains and nftables tables in the calling thread's network
/// namespace (see the module docs).
pub fn cleanup(exec: &Exec) -> Result<KubeProxyCleanup, KubeProxyError> {
    let mut report = KubeProxyCleanup::default();
    for (family, save, restore) in [
        ("IPv4", "iptables-save", "iptables-restore"),
        ("IPv6", "ip6tables-save", "ip6tables-restore"),
    ] {
        for table in TABLES {
            let err = |source| KubeProxyError::Iptables {
                family,
                table,
                source,
            };
            let saved = match exec.run(save, &["-t", table], None) {
                Ok(s) => s,
                // A family or table the kernel does not have: nothing of kube-proxy's there.
                Err(ExecError::Failed { .. }) => continue,
                Err(e) => return Err(err(e)),
            };
            let Some((input, chains, jumps)) = cleanup_input(table, &saved) else {
                continue;
            };
            exec.run(
                restore,
                &[
                    "--noflush",
                    "-w",
                    serval_dp_iptables::exec::XTABLES_WAIT_SECS,
                ],
                Some(&input),
            )
            .map_err(err)?;
            report.jumps += jumps;
            report
                .chains
                .extend(chains.into_iter().map(|c| (family, table, c)));
        }
    }
    match exec.run("nft", &["list", "tables"], None) {
        Ok(tables) => {
            if let Some((input, found)) = nft_input(&tables) {
                exec.run("nft", &["-f", "-"], Some(&input))
                    .map_err(|source| KubeProxyError::Nft { source })?;
                report.nft_tables = found;
            }
        }
        // No nft binary, or no nftables in the kernel: no kube-proxy nftables mode either.
        Err(ExecError::Spawn { .. } | ExecError::Failed { .. }) => {}
        Err(source) => return Err(KubeProxyError::Nft { source }),
    }
    if !report.is_empty() {
        tracing::info!(
            chains = report.chains.len(),
            jumps = report.jumps,
            nft_tables = ?report.nft_tables,
            "removed kube-proxy's rules (bpfKubeProxyIptablesCleanupEnabled; the eBPF dataplane serves services)"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:SERVAL-PREROUTING - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment serval -j SERVAL-PREROUTING
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A OTHER -g KUBE-MARK-MASQ
-A OTHER -j KUBE-KUBELET-CANARY
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP
COMMIT
"#;

    #[test]
    fn removes_kube_chains_and_the_jumps_to_them_only() {
        let (input, chains, jumps) = cleanup_input("nat", SAVE).expect("kube-proxy state");
        assert_eq!(
            chains,
            vec![
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING",
                "KUBE-SERVICES",
                "KUBE-SVC-ABCDEFGHIJKLMNOP"
            ]
        );
        assert_eq!(jumps, 4);
        let want = "*nat\n\
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-D OTHER -g KUBE-MARK-MASQ\n\
-F KUBE-MARK-MASQ\n-F KUBE-POSTROUTING\n-F KUBE-SERVICES\n-F KUBE-SVC-ABCDEFGHIJKLMNOP\n\
-X KUBE-MARK-MASQ\n-X KUBE-POSTROUTING\n-X KUBE-SERVICES\n-X KUBE-SVC-ABCDEFGHIJKLMNOP\n\
COMMIT\n";
        assert_eq!(input, want);
        assert!(cleanup_input("filter", SAVE).is_none(), "no filter section");
    }

    #[test]
    fn nothing_of_kube_proxy_means_no_transaction() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n-A PREROUTING -j SERVAL-X\nCOMMIT\n";
        assert!(cleanup_input("nat", save).is_none());
    }

    #[test]
    fn nft_tables_of_kube_proxy_only() {
        let tables = "table inet filter\ntable ip kube-proxy\ntable ip6 kube-proxy\ntable ip nat\n";
        let (input, found) = nft_input(tables).unwrap();
        assert_eq!(found, vec!["ip kube-proxy", "ip6 kube-proxy"]);
        assert_eq!(
            input,
            "delete table ip kube-proxy\ndelete table ip6 kube-proxy\n"
        );
        assert!(nft_input("table inet filter\n").is_none());
    }
}
