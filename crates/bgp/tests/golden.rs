//! Golden-file tests for rendered BIRD configurations, and BIRD's own parser (`bird -p`) on
//! every golden file. Regenerate with `SERVAL_BGP_BLESS=1 cargo test -p serval-bgp --test
//! golden` and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serval_bgp::config::{
    BgpInputs, PeerExtras, RenderOptions, RenderedConfig, RouterNeighbor, RouterSpec, SessionKind,
    SourceAddress, Timers, render, render_router,
};
use serval_bgp::frr::render_bgpd;
use serval_model::Resource;
use serval_model::calico::{BGPConfiguration, BGPPeer, IPPool, Node};
use serval_model::types::AsNumber;

struct Inputs {
    nodes: Vec<Node>,
    configs: Vec<BGPConfiguration>,
    peers: Vec<BGPPeer>,
    pools: Vec<IPPool>,
}

fn load(name: &str) -> Inputs {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inputs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = serval_model::parse_documents(name, &text)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{e}"));
    let mut i = Inputs {
        nodes: vec![],
        configs: vec![],
        peers: vec![],
        pools: vec![],
    };
    for d in docs {
        match d {
            Resource::Node(n) => i.nodes.push(n),
            Resource::BGPConfiguration(c) => i.configs.push(c),
            Resource::BGPPeer(p) => i.peers.push(p),
            Resource::IPPool(p) => i.pools.push(p),
            other => panic!("unexpected {:?} in {name}", other.kind()),
        }
    }
    i
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn render_node(i: &Inputs, node: &str, blocks: &[&str], opts: &RenderOptions) -> RenderedConfig {
    let blocks = nets(blocks);
    render(
        &BgpInputs {
            node,
            nodes: &i.nodes,
            configs: &i.configs,
            peers: &i.peers,
            blocks: &blocks,
            pools: &i.pools,
        },
        opts,
    )
    .unwrap()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `text` with `tests/golden/<name>`, or writes it with SERVAL_BGP_BLESS=1.
fn check_golden(name: &str, text: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("SERVAL_BGP_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with SERVAL_BGP_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == text,
        "{} differs from the rendered text (SERVAL_BGP_BLESS=1 regenerates):\n{text}",
        path.display()
    );
}

#[test]
fn mesh_v4() {
    let i = load("mesh_v4.yaml");
    let r = render_node(
        &i,
        "node1",
        &["10.244.1.0/26", "10.244.1.64/26"],
        &RenderOptions::default(),
    );
    check_golden("mesh_v4_node1.conf", &r.text);
    assert_eq!(r.router_id.to_string(), "172.31.7.11");
    assert_eq!(r.local_as, AsNumber(64512));
    let peers: Vec<String> = r.sessions.iter().map(|s| s.peer.to_string()).collect();
    assert_eq!(peers, ["172.31.7.12", "172.31.7.13"]);
    assert!(r.sessions.iter().all(|s| s.kind == SessionKind::Mesh));
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
}

#[test]
fn ipv6_only() {
    let i = load("ipv6_only.yaml");
    let r = render_node(
        &i,
        "node2",
        &["fd00:10:244::40/122"],
        &RenderOptions::default(),
    );
    check_golden("ipv6_only_node2.conf", &r.text);
    assert_eq!(
        r.router_id,
        serval_bgp::config::router_id_from_name("node2")
    );
    assert_ne!(
        r.router_id,
        serval_bgp::config::router_id_from_name("node1"),
        "router ids differ per node"
    );
    let kinds: Vec<(String, SessionKind)> = r
        .sessions
        .iter()
        .map(|s| (s.peer.to_string(), s.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("fd00:5e:7::fe".to_owned(), SessionKind::Global),
            ("fd00:5e:7::11".to_owned(), SessionKind::Mesh)
        ]
    );
    assert!(
        !r.text.contains("ipv4"),
        "no IPv4 channel in an IPv6-only config"
    );
}

#[test]
fn dual_stack_services_and_node_specific_peers() {
    let i = load("dual_stack.yaml");
    let mut opts = RenderOptions::default();
    opts.peer_extras.insert(
        "tor-r1".into(),
        PeerExtras {
            source_address: SourceAddress::None,
            password: Some("s3cret".into()),
        },
    );
    opts.peer_extras.insert(
        "tor-r2".into(),
        PeerExtras {
            source_address: SourceAddress::UseNodeIp,
            password: Some("bad\"quote".into()),
        },
    );
    let r1 = render_node(
        &i,
        "node1",
        &["10.244.1.0/26", "fd00:10:244::/122", "10.250.3.0/26"],
        &opts,
    );
    assert!(!r1.text.contains("10.250.3.0/26"), "disableBGPExport");
    assert!(
        r1.skipped.iter().any(|s| s.contains("10.250.3.0/26")),
        "{:?}",
        r1.skipped
    );
    assert!(
        r1.text
            .contains("if net ~ [ fd00:10:244::/112+ ] then reject;"),
        "VXLAN pool routes stay the agent's"
    );
    assert!(
        !r1.text.contains("10.244.0.0/16+"),
        "native pool routes are BIRD's"
    );
    check_golden("dual_stack_node1.conf", &r1.text);
    assert_eq!(r1.local_as, AsNumber(65001), "node's own AS wins");
    let tor = r1
        .sessions
        .iter()
        .find(|s| s.kind == SessionKind::NodeSpecific)
        .unwrap();
    assert_eq!(
        (tor.peer.to_string(), tor.port),
        ("172.31.7.1".to_owned(), 1790)
    );
    assert_eq!(r1.sessions.len(), 3, "{:?}", r1.sessions);
    let r2 = render_node(&i, "node2", &["10.244.2.0/26"], &opts);
    check_golden("dual_stack_node2.conf", &r2.text);
    let mesh_to_1 = r2
        .sessions
        .iter()
        .find(|s| s.description == "node1")
        .unwrap();
    assert_eq!(mesh_to_1.peer_as, AsNumber(65001));
    assert_eq!(
        mesh_to_1.port, 1179,
        "mesh peers use the cluster listenPort"
    );
    assert!(
        !r2.text.contains("172.31.8.1"),
        "tor-r2's password cannot be quoted"
    );
    assert!(
        r2.skipped.iter().any(|s| s.contains("password")),
        "{:?}",
        r2.skipped
    );
    let mut plain = opts.clone();
    plain.peer_extras.remove("tor-r2");
    let r2 = render_node(&i, "node2", &["10.244.2.0/26"], &plain);
    assert!(r2.text.contains("multihop;"), "eBGP peer off-subnet");
    assert!(
        !r2.text.contains("debug protocols"),
        "node.node1 config applies to node1 only"
    );
}

#[test]
fn route_reflector() {
    let i = load("route_reflector.yaml");
    let rr = render_node(&i, "node1", &["10.244.1.0/26"], &RenderOptions::default());
    check_golden("route_reflector_node1.conf", &rr.text);
    assert!(rr.text.contains("rr cluster id 224.0.0.1;"));
    let clients: Vec<String> = rr
        .sessions
        .iter()
        .filter(|s| s.rr_client && s.kind == SessionKind::RouteReflector)
        .map(|s| s.description.clone())
        .collect();
    assert_eq!(clients, ["node2", "node3"]);
    let client = render_node(&i, "node2", &["10.244.2.0/26"], &RenderOptions::default());
    check_golden("route_reflector_node2.conf", &client.text);
    let peers: Vec<(String, SessionKind)> = client
        .sessions
        .iter()
        .map(|s| (s.description.clone(), s.kind))
        .collect();
    assert_eq!(
        peers,
        [
            (
                "BGPPeer external-multihop".to_owned(),
                SessionKind::NodeSpecific
            ),
            ("node1".to_owned(), SessionKind::RouteReflector)
        ],
        "no mesh session to node3"
    );
    assert!(client.text.contains("next hop keep;"));
    let node3 = render_node(&i, "node3", &[], &RenderOptions::default());
    assert_eq!(
        node3.sessions.len(),
        1,
        "node-specific peer is node2's only"
    );
}

#[test]
fn fast_timers_render() {
    let i = load("mesh_v4.yaml");
    let opts = RenderOptions {
        timers: Timers::fast(),
        ..RenderOptions::default()
    };
    let r = render_node(&i, "node3", &[], &opts);
    assert!(r.text.contains("hold time 6;"));
    assert!(
        !r.text.contains("protocol static"),
        "no blocks, nothing announced"
    );
}

#[test]
fn missing_node_and_address_are_errors() {
    let i = load("mesh_v4.yaml");
    let e = render(
        &BgpInputs {
            node: "ghost",
            nodes: &i.nodes,
            configs: &[],
            peers: &[],
            blocks: &[],
            pools: &[],
        },
        &RenderOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("ghost"), "{e}");
    let bare = vec![Node {
        metadata: serval_model::ObjectMeta::named("bare"),
        ..Default::default()
    }];
    let e = render(
        &BgpInputs {
            node: "bare",
            nodes: &bare,
            configs: &[],
            peers: &[],
            blocks: &[],
            pools: &[],
        },
        &RenderOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("ipv4Address"), "{e}");
}

fn router_spec() -> RouterSpec {
    RouterSpec {
        router_id: "172.31.7.254".parse().unwrap(),
        asn: AsNumber(64513),
        ipv4: Some("172.31.7.254".parse().unwrap()),
        ipv6: Some("fd00:5e:7::fe".parse().unwrap()),
        neighbors: vec![
            RouterNeighbor {
                name: "node1".into(),
                addr: "172.31.7.11".parse().unwrap(),
                asn: AsNumber(64512),
            },
            RouterNeighbor {
                name: "node1".into(),
                addr: "fd00:5e:7::11".parse().unwrap(),
                asn: AsNumber(64512),
            },
        ],
        timers: Timers::default(),
    }
}

#[test]
fn routers() {
    check_golden("router_bird.conf", &render_router(&router_spec()));
    let frr = render_bgpd(&router_spec());
    check_golden("router_frr_bgpd.conf", &frr);
    assert!(frr.contains("neighbor fd00:5e:7::11 activate"));
}

/// BIRD itself accepts every golden configuration (`bird -p`, parse only).
#[test]
fn bird_parses_golden_files() {
    if !Path::new(serval_bgp::bird::BIRD_BIN).exists() {
        eprintln!(
            "skipping bird_parses_golden_files: {} is not installed (apt install bird2)",
            serval_bgp::bird::BIRD_BIN
        );
        return;
    }
    let mut checked = BTreeMap::new();
    for e in std::fs::read_dir(golden_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".conf") || name.starts_with("router_frr") {
            continue;
        }
        let r = serval_bgp::bird::check_config(Path::new(serval_bgp::bird::BIRD_BIN), &p);
        checked.insert(name, r.map_err(|e| e.to_string()));
    }
    assert!(checked.len() >= 6, "{checked:?}");
    let bad: Vec<_> = checked.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(bad.is_empty(), "BIRD rejects: {bad:#?}");
}

/// A broken configuration is reported with BIRD's message.
#[test]
fn bird_rejects_garbage() {
    if !Path::new(serval_bgp::bird::BIRD_BIN).exists() {
        eprintln!("skipping bird_rejects_garbage: bird2 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.conf");
    std::fs::write(
        &f,
        "router id 1.2.3.4;\nprotocol bgp x { neighbor 1.2.3.4 as ; }\n",
    )
    .unwrap();
    let e = serval_bgp::bird::check_config(Path::new(serval_bgp::bird::BIRD_BIN), &f).unwrap_err();
    assert!(e.to_string().contains("bad.conf"), "{e}");
}

/// FRR's own parser (`bgpd -C`, dry run) accepts the rendered bgpd.conf: no line is reported.
#[test]
fn frr_parses_golden_bgpd() {
    use std::os::unix::fs::PermissionsExt as _;
    let bgpd = Path::new(serval_bgp::frr::FRR_DIR).join("bgpd");
    if !bgpd.exists() || !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipping frr_parses_golden_bgpd: needs root and {} (apt install frr)",
            bgpd.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // bgpd drops to the frr user: it must read the file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let check = |text: &str| -> String {
        let f = dir.path().join("bgpd.conf");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = std::process::Command::new(&bgpd)
            .args(["-C", "-u", "frr", "-g", "frr", "-f"])
            .arg(&f)
            .arg("--vty_socket")
            .arg(dir.path())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let golden = std::fs::read_to_string(golden_dir().join("router_frr_bgpd.conf")).unwrap();
    let out = check(&golden);
    assert!(!out.contains("config line"), "bgpd -C complains:\n{out}");
    let out = check("router bgp 1\n neighbor x remote-as\n");
    assert!(
        out.contains("config line"),
        "bgpd -C reports errors this way:\n{out}"
    );
}
