//! The ipset side: canonical member text, reading `ipset save` back, and writing
//! `ipset restore` input.
//!
//! Sets are per family (`family inet` / `inet6`), named `serval-4-…` / `serval-6-…`. Only
//! sets with the `serval-` prefix are read or written. Updates are member deltas (`add` /
//! `del` with `-exist`), so a set referenced by live rules is never emptied in between; a
//! change of more than [`SWAP_THRESHOLD`] members is built in `NAME-tmp` and swapped in; sets
//! no longer wanted are destroyed only after the rules referencing them are gone.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use ipnet::IpNet;

use crate::rules::{Family, IpSet, MAX_IPSET_LEN, SetType, is_our_set};

/// Above this many added plus deleted members, a set is rebuilt in a temporary set and
/// swapped in atomically instead of being edited member by member.
pub const SWAP_THRESHOLD: usize = 256;

/// Suffix of the temporary set of a swap.
const SWAP_SUFFIX: &str = "-tmp";

/// A `hash:net` member as `ipset save` prints it: a host route without its prefix length,
/// anything else as `addr/len` (network address). A zero-length prefix is not allowed in
/// hash:net; callers split it with [`split_zero_prefix`].
pub fn net_member(net: &IpNet) -> String {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Prefix of a member token that is a `nomatch` entry (see [`nomatch_member`]).
pub const NOMATCH_MARK: char = '!';

/// A `hash:net` `nomatch` entry: addresses whose longest matching entry it is are NOT in
/// the set (how a set excludes a nested prefix). The token is `!` + [`net_member`] (members
/// are single tokens); [`restore_text`] writes it as ipset does, `NET nomatch`.
pub fn nomatch_member(net: &IpNet) -> String {
    format!("{NOMATCH_MARK}{}", net_member(net))
}

/// A member token as `ipset restore` / `ipset save` write it (`NET nomatch` for a
/// [`nomatch_member`]).
pub fn restore_text(member: &str) -> String {
    match member.strip_prefix(NOMATCH_MARK) {
        Some(net) => format!("{net} nomatch"),
        None => member.to_owned(),
    }
}

/// The element a member token stands for, without its flag (what `del` takes).
fn element(member: &str) -> &str {
    member.strip_prefix(NOMATCH_MARK).unwrap_or(member)
}

/// `0.0.0.0/0` → `0.0.0.0/1` + `128.0.0.0/1` (and the IPv6 equivalent): hash:net refuses a
/// zero prefix. Other nets are returned unchanged.
pub fn split_zero_prefix(net: &IpNet) -> Vec<IpNet> {
    if net.prefix_len() != 0 {
        return vec![*net];
    }
    match net {
        IpNet::V4(_) => vec![
            "0.0.0.0/1".parse().unwrap_or(*net),
            "128.0.0.0/1".parse().unwrap_or(*net),
        ],
        IpNet::V6(_) => vec![
            "::/1".parse().unwrap_or(*net),
            "8000::/1".parse().unwrap_or(*net),
        ],
    }
}

/// A `hash:ip,port` member as `ipset save` prints it: `IP,PROTO:PORT` with `proto` in
/// lower case (`tcp`, `udp`, `sctp`).
pub fn ip_port_member(ip: &IpAddr, proto: &str, port: u16) -> String {
    format!("{ip},{}:{port}", proto.to_ascii_lowercase())
}

/// Parses `ipset save` output into our sets of one family.
pub fn parse_save(text: &str, family: Family) -> BTreeMap<String, IpSet> {
    let mut sets: BTreeMap<String, IpSet> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, set_type, rest @ ..] if is_our_set(name) => {
                let set_family = rest
                    .windows(2)
                    .find(|w| w[0] == "family")
                    .map_or("inet", |w| w[1]);
                if set_family == family.ipset_family() {
                    sets.insert(
                        (*name).to_owned(),
                        IpSet {
                            set_type: SetType::from_name(set_type),
                            members: Default::default(),
                        },
                    );
                }
            }
            ["add", name, member, flags @ ..] => {
                if let Some(set) = sets.get_mut(*name) {
                    if flags.contains(&"nomatch") {
                        set.members.insert(format!("{NOMATCH_MARK}{member}"));
                    } else {
                        set.members.insert((*member).to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    sets
}

/// What a set update does, for logs and stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    /// Sets created.
    pub created: Vec<String>,
    /// Sets whose members changed.
    pub updated: Vec<String>,
    /// Members added plus members deleted.
    pub members_changed: usize,
    /// Sets to destroy once no rule references them.
    pub destroy: Vec<String>,
}

/// The `ipset restore` input that creates and fills the desired sets (run before the
/// iptables update, so new rules find their sets), plus the names of the sets to destroy
/// afterwards. A set whose type differs from the desired one is destroyed and re-created
/// (possible only after outside tampering: names are derived from the type).
pub fn sets_update(
    family: Family,
    desired: &BTreeMap<String, IpSet>,
    current: &BTreeMap<String, IpSet>,
) -> (String, SetChange) {
    let mut out = String::new();
    let mut change = SetChange::default();
    for (name, set) in desired {
        let Some(set_type) = set.set_type else {
            continue;
        };
        let existing = current.get(name);
        match existing {
            Some(cur) if cur.set_type == set.set_type => {
                let adds: Vec<_> = set.members.difference(&cur.members).collect();
                let dels: Vec<_> = cur.members.difference(&set.members).collect();
                if adds.is_empty() && dels.is_empty() {
                    continue;
                }
                change.updated.push(name.clone());
                change.members_changed += adds.len() + dels.len();
                let temp = format!("{name}{SWAP_SUFFIX}");
                if adds.len() + dels.len() > SWAP_THRESHOLD && temp.len() <= MAX_IPSET_LEN {
                    // A big change: fill a temporary set and swap it in, so rules see the old
                    // members or the new ones, never a mixture.
                    let _ = writeln!(
                        out,
                        "create {temp} {} family {} -exist",
                        set_type.name(),
                        family.ipset_family()
                    );
                    let _ = writeln!(out, "flush {temp}");
                    for member in &set.members {
                        let _ = writeln!(out, "add {temp} {} -exist", restore_text(member));
                    }
                    let _ = writeln!(out, "swap {temp} {name}");
                    let _ = writeln!(out, "destroy {temp}");
                    continue;
                }
                // An element whose nomatch flag changes is re-added with `-exist` (which
                // sets the flag either way), never deleted.
                let added: std::collections::BTreeSet<&str> =
                    adds.iter().map(|m| element(m)).collect();
                for member in adds {
                    let _ = writeln!(out, "add {name} {} -exist", restore_text(member));
                }
                // Match entries go before nomatch ones (and adds put nomatch entries first,
                // by token order), so no address is in the set in between that is in neither
                // the old nor the new one.
                let (nomatch_dels, match_dels): (Vec<&&String>, Vec<&&String>) =
                    dels.iter().partition(|m| m.starts_with(NOMATCH_MARK));
                for member in match_dels
                    .into_iter()
                    .chain(nomatch_dels)
                    .filter(|m| !added.contains(element(m)))
                {
                    let _ = writeln!(out, "del {name} {} -exist", element(member));
                }
            }
            _ => {
                if existing.is_some() {
                    let _ = writeln!(out, "destroy {name}");
                }
                change.created.push(name.clone());
                change.members_changed += set.members.len();
                let _ = writeln!(
                    out,
                    "create {name} {} family {} -exist",
                    set_type.name(),
                    family.ipset_family()
                );
                for member in &set.members {
                    let _ = writeln!(out, "add {name} {} -exist", restore_text(member));
                }
            }
        }
    }
    change.destroy = current
        .keys()
        .filter(|name| !desired.contains_key(*name))
        .cloned()
        .collect();
    (out, change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_canonical() {
        assert_eq!(net_member(&"10.0.0.1/32".parse().unwrap()), "10.0.0.1");
        assert_eq!(net_member(&"10.0.0.7/24".parse().unwrap()), "10.0.0.0/24");
        assert_eq!(net_member(&"fd00:0::1/128".parse().unwrap()), "fd00::1");
        assert_eq!(net_member(&"fd00::/64".parse().unwrap()), "fd00::/64");
        assert_eq!(
            ip_port_member(&"10.0.0.1".parse().unwrap(), "TCP", 80),
            "10.0.0.1,tcp:80"
        );
        assert_eq!(split_zero_prefix(&"0.0.0.0/0".parse().unwrap()).len(), 2);
        assert_eq!(
            split_zero_prefix(&"::/0".parse().unwrap())[1].to_string(),
            "8000::/1"
        );
        assert_eq!(split_zero_prefix(&"10.0.0.0/8".parse().unwrap()).len(), 1);
    }

    #[test]
    fn save_is_read_per_family_for_our_sets() {
        let text = "create serval-4-a hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x9e8a9bda\n\
                    add serval-4-a 10.0.0.1\n\
                    add serval-4-a 10.1.0.0/16\n\
                    create serval-6-a hash:net family inet6 hashsize 1024\n\
                    add serval-6-a fd00::1\n\
                    create other hash:net family inet\n\
                    add other 1.2.3.4\n\
                    create serval-4-np hash:ip,port family inet hashsize 1024\n\
                    add serval-4-np 10.0.0.1,tcp:80\n";
        let v4 = parse_save(text, Family::V4);
        assert_eq!(v4.keys().collect::<Vec<_>>(), ["serval-4-a", "serval-4-np"]);
        assert_eq!(v4["serval-4-a"].members.len(), 2);
        assert_eq!(v4["serval-4-np"].set_type, Some(SetType::HashIpPort));
        let v6 = parse_save(text, Family::V6);
        assert_eq!(v6.keys().collect::<Vec<_>>(), ["serval-6-a"]);
    }

    #[test]
    fn nomatch_entries_round_trip_and_flip_without_a_delete() {
        let text = "create serval-4-p hash:net family inet hashsize 1024\n\
                    add serval-4-p 10.0.0.0/8\n\
                    add serval-4-p 10.1.0.0/16 nomatch\n";
        let current = parse_save(text, Family::V4);
        let members: Vec<&str> = current["serval-4-p"]
            .members
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(members, ["!10.1.0.0/16", "10.0.0.0/8"]);
        assert_eq!(
            nomatch_member(&"10.1.0.0/16".parse().unwrap()),
            "!10.1.0.0/16"
        );
        // 10.1.0.0/16 becomes a match entry, 10.0.0.0/8 goes: the flip is an add -exist.
        let mut desired = current.clone();
        let set = desired.get_mut("serval-4-p").unwrap();
        set.members = ["10.1.0.0/16".to_owned()].into_iter().collect();
        let (text, _) = sets_update(Family::V4, &desired, &current);
        assert_eq!(
            text,
            "add serval-4-p 10.1.0.0/16 -exist\n\
             del serval-4-p 10.0.0.0/8 -exist\n"
        );
        let (text, _) = sets_update(Family::V4, &current, &desired);
        assert_eq!(
            text,
            "add serval-4-p 10.1.0.0/16 nomatch -exist\n\
             add serval-4-p 10.0.0.0/8 -exist\n"
        );
        let (text, _) = sets_update(Family::V4, &current, &BTreeMap::new());
        assert!(
            text.contains("add serval-4-p 10.1.0.0/16 nomatch -exist\n"),
            "{text}"
        );
    }

    #[test]
    fn update_is_a_member_delta() {
        let mut a = IpSet::new(SetType::HashNet);
        a.members
            .extend(["10.0.0.1".to_owned(), "10.0.0.2".to_owned()]);
        let mut current = BTreeMap::new();
        current.insert("serval-4-a".to_owned(), a.clone());
        current.insert("serval-4-old".to_owned(), IpSet::new(SetType::HashNet));
        let mut desired = BTreeMap::new();
        let mut a2 = a.clone();
        a2.members.remove("10.0.0.1");
        a2.members.insert("10.0.0.3".to_owned());
        desired.insert("serval-4-a".to_owned(), a2);
        desired.insert("serval-4-new".to_owned(), IpSet::new(SetType::HashIpPort));
        let (text, change) = sets_update(Family::V4, &desired, &current);
        assert_eq!(
            text,
            "add serval-4-a 10.0.0.3 -exist\n\
             del serval-4-a 10.0.0.1 -exist\n\
             create serval-4-new hash:ip,port family inet -exist\n"
        );
        assert_eq!(change.created, ["serval-4-new"]);
        assert_eq!(change.updated, ["serval-4-a"]);
        assert_eq!(change.destroy, ["serval-4-old"]);
        assert_eq!(change.members_changed, 2);

        let (text, change) = sets_update(Family::V4, &current, &current);
        assert!(text.is_empty() && change.destroy.is_empty());

        // A big change is swapped in.
        let mut big = a.clone();
        big.members = (0..300)
            .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
            .collect();
        let desired = BTreeMap::from([("serval-4-a".to_owned(), big)]);
        let (text, change) = sets_update(Family::V4, &desired, &current);
        assert_eq!(change.members_changed, 302);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "create serval-4-a-tmp hash:net family inet -exist"
        );
        assert_eq!(lines[1], "flush serval-4-a-tmp");
        assert_eq!(lines.len(), 2 + 300 + 2);
        assert_eq!(lines[302], "swap serval-4-a-tmp serval-4-a");
        assert_eq!(lines[303], "destroy serval-4-a-tmp");
    }
}
