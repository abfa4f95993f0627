//! BGP session status: `birdc show protocols all` parsed into [`Session`]s, and the table
//! `serval node status` prints (like `calicoctl node status`).
//!
//! Only BGP protocols are sessions; their kind comes from the protocol name the renderer
//! chose (see [`crate::config::protocol_name`]). Route counts are the session channel's
//! `Routes: N imported, M exported` line (summed over channels).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::SessionKind;

/// A `show protocols all` text that does not look like BIRD's.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "birdc output has no protocol table header (\"Name Proto Table State Since Info\"); \
         is the socket a BIRD 2 control socket? Output starts with: {start:?}"
    )]
    NoHeader { start: String },
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// BIRD protocol name.
    pub name: String,
    /// Neighbour address (None when BIRD did not print it).
    pub peer: Option<IpAddr>,
    /// The peer's description (node name or `BGPPeer <name>`).
    pub description: Option<String>,
    /// None for protocols not rendered by Serval.
    pub kind: Option<SessionKind>,
    /// BIRD's protocol state: `up`, `start`, `down`, ...
    pub state: String,
    /// When the state last changed, as BIRD prints it.
    pub since: String,
    /// BIRD's info column, e.g. `Established` or `Active Socket: Connection refused`.
    pub info: String,
    /// The BGP state (`Established`, `Active`, `Connect`, ...).
    pub bgp_state: Option<String>,
    pub last_error: Option<String>,
    pub routes_imported: u64,
    pub routes_exported: u64,
}

impl Session {
    /// Established (the state `calicoctl` shows as `up` with info `Established`).
    pub fn is_established(&self) -> bool {
        self.bgp_state.as_deref() == Some("Established") || self.info.starts_with("Established")
    }
}

/// One node's sessions, for [`render_table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    /// Whether BIRD answered; when false, `error` says why.
    pub running: bool,
    pub error: Option<String>,
    pub sessions: Vec<Session>,
}

/// Asks the BIRD behind control socket `socket` (`birdc` at `birdc_bin`, normally
/// [`crate::bird::BIRDC_BIN`]) for `node`'s sessions. Control sockets are files, so this works
/// from any network namespace (the lab's nodes: `<lab>/nodes/<node>/bird/bird.ctl`).
pub fn query(node: &str, birdc_bin: &std::path::Path, socket: &std::path::Path) -> NodeStatus {
    let result = crate::bird::birdc(birdc_bin, socket, &["show", "protocols", "all"])
        .and_then(|text| Ok(parse_protocols(&text)?));
    match result {
        Ok(sessions) => NodeStatus {
            node: node.to_owned(),
            running: true,
            error: None,
            sessions,
        },
        Err(e) => NodeStatus {
            node: node.to_owned(),
            running: false,
            error: Some(e.to_string()),
            sessions: Vec::new(),
        },
    }
}

fn looks_like_date(s: &str) -> bool {
    s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-'
}

/// Parses `birdc show protocols all` output (also plain `show protocols`) and returns the BGP
/// protocols.
pub fn parse_protocols(text: &str) -> Result<Vec<Session>, StatusError> {
    let mut lines = text.lines().peekable();
    let mut found_header = false;
    for line in lines.by_ref() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.starts_with(&["Name", "Proto", "Table", "State"]) {
            found_header = true;
            break;
        }
    }
    if !found_header {
        return Err(StatusError::NoHeader {
            start: text.chars().take(200).collect(),
        });
    }
    let mut out = Vec::new();
    let mut cur: Option<Session> = None;
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if let Some(s) = cur.take() {
                out.push(s);
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 5 || words[1] != "BGP" {
                continue;
            }
            let (since, rest) = if looks_like_date(words[4]) && words.len() > 5 {
                (format!("{} {}", words[4], words[5]), &words[6..])
            } else {
                (words[4].to_owned(), &words[5..])
            };
            cur = Some(Session {
                name: words[0].to_owned(),
                peer: None,
                description: None,
                kind: SessionKind::from_protocol_name(words[0]),
                state: words[3].to_owned(),
                since,
                info: rest.join(" "),
                bgp_state: None,
                last_error: None,
                routes_imported: 0,
                routes_exported: 0,
            });
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Description" => s.description = Some(value.to_owned()),
            "BGP state" => s.bgp_state = Some(value.to_owned()),
            "Neighbor address" => {
                // BIRD may append "%iface" for link-local neighbours.
                s.peer = value.split('%').next().and_then(|a| a.parse().ok());
            }
            "Last error" => s.last_error = Some(value.to_owned()),
            "Routes" => {
                for part in value.split(',') {
                    let mut it = part.split_whitespace();
                    let (Some(n), Some(what)) = (it.next(), it.next()) else {
                        continue;
                    };
                    let Ok(n) = n.parse::<u64>() else { continue };
                    match what {
                        "imported" => s.routes_imported += n,
                        "exported" => s.routes_exported += n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(s) = cur.take() {
        out.push(s);
    }
    Ok(out)
}

/// The `serval node status` table: per node, one row per session (peer address, type, state,
/// since, info, routes received/exported), like `calicoctl node status`.
pub fn render_table(nodes: &[NodeStatus]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !n.running {
            let _ = writeln!(
                out,
                "Node {}: BIRD is NOT running{}",
                n.node,
                n.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            continue;
        }
        let _ = writeln!(out, "Node {}: BIRD is running.\n", n.node);
        if n.sessions.is_empty() {
            out.push_str("No BGP sessions.\n");
            continue;
        }
        let header = [
            "PEER ADDRESS",
            "PEER",
            "PEER TYPE",
            "STATE",
            "SINCE",
            "INFO",
            "ROUTES RECEIVED",
            "ROUTES EXPORTED",
        ];
        let rows: Vec<[String; 8]> = n
            .sessions
            .iter()
            .map(|s| {
                [
                    s.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.description.clone().unwrap_or_else(|| "-".into()),
                    s.kind
                        .map(|k| k.describe().to_owned())
                        .unwrap_or_else(|| "other".into()),
                    s.state.clone(),
                    s.since.clone(),
                    s.info.clone(),
                    s.routes_imported.to_string(),
                    s.routes_exported.to_string(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let sep: String = widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(w + 2)))
            .collect::<String>()
            + "+\n";
        let line = |cells: &[&str]| -> String {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("| {c:<w$} "))
                .collect::<String>()
                + "|\n"
        };
        out.push_str(&sep);
        out.push_str(&line(&header));
        out.push_str(&sep);
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        out.push_str(&sep);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     2026-11-21 16:04:36  

kernel4    Kernel     master4    up     2026-11-21 16:04:36  
  Channel ipv4
    State:          UP
    Routes:         0 imported, 1 exported, 0 preferred

Mesh_172_31_250_2 BGP        ---        up     2026-11-21 16:04:37  Established   
  Description:    node2
  BGP state:          Established
    Neighbor address: 172.31.250.2
    Neighbor AS:      64512
    Local AS:         64512
  Channel ipv4
    State:          UP
    Routes:         1 imported, 2 exported, 1 preferred

Global_fd00_5e_7__fe BGP        ---        start  16:04:44.077  Active        Socket: Connection refused
  Description:    BGPPeer router
  BGP state:          Active
    Neighbor address: fd00:5e:7::fe
    Neighbor AS:      64513
    Last error:       Socket: Connection refused
  Channel ipv6
    State:          DOWN
";

    #[test]
    fn parses_bgp_protocols_only() {
        let s = parse_protocols(SAMPLE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "Mesh_172_31_250_2");
        assert_eq!(s[0].kind, Some(SessionKind::Mesh));
        assert_eq!(s[0].peer, Some("172.31.250.2".parse().unwrap()));
        assert_eq!(s[0].description.as_deref(), Some("node2"));
        assert_eq!(s[0].state, "up");
        assert_eq!(s[0].since, "2026-11-21 16:04:37");
        assert_eq!(s[0].info, "Established");
        assert!(s[0].is_established());
        assert_eq!((s[0].routes_imported, s[0].routes_exported), (1, 2));
        assert_eq!(s[1].kind, Some(SessionKind::Global));
        assert_eq!(s[1].state, "start");
        assert_eq!(s[1].since, "16:04:44.077");
        assert_eq!(s[1].info, "Active Socket: Connection refused");
        assert_eq!(
            s[1].last_error.as_deref(),
            Some("Socket: Connection refused")
        );
        assert!(!s[1].is_established());
        assert_eq!((s[1].routes_imported, s[1].routes_exported), (0, 0));
    }

    #[test]
    fn rejects_non_bird_output() {
        assert!(parse_protocols("Unable to connect to server control socket").is_err());
    }

    #[test]
    fn table_lists_each_session() {
        let sessions = parse_protocols(SAMPLE).unwrap();
        let t = render_table(&[
            NodeStatus {
                node: "node1".into(),
                running: true,
                error: None,
                sessions,
            },
            NodeStatus {
                node: "node2".into(),
                running: false,
                error: Some("no control socket".into()),
                sessions: vec![],
            },
        ]);
        assert!(t.contains("Node node1: BIRD is running."), "{t}");
        assert!(t.contains("| 172.31.250.2 "), "{t}");
        assert!(t.contains("| node-to-node mesh "), "{t}");
        assert!(t.contains("| global "), "{t}");
        assert!(
            t.contains("Node node2: BIRD is NOT running (no control socket)"),
            "{t}"
        );
        let widths: Vec<usize> = t
            .lines()
            .filter(|l| l.starts_with('|') || l.starts_with('+'))
            .map(str::len)
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
