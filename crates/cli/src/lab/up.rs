//! `serval lab up`: underlay, nodes, outside host, datastore, initial resources, CNI dirs,
//! agents.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;
use serval_api::ApplyMode;
use serval_sys::{NetNs, Netlink};

use super::layout::{self, Layout};
use super::state::{
    CLUSTER_AS, Dataplane, DatastoreKind, Encapsulation, HOST_ID_BRIDGE, HOST_ID_NODE_BASE,
    HOST_ID_OUTSIDE, HOST_ID_ROUTER, Host, IpFamily, LabState, MAX_NODES, NodeInfo, Plan,
    ROUTER_AS, RouterImpl, Routing,
};
use super::{Usage, bgp, down, etcd, net, pods, procs, resources};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Lab name, 1-12 of a-z, 0-9, '-' (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    #[arg(long, value_enum, default_value_t = IpFamily::Ipv4)]
    pub ip_family: IpFamily,
    #[arg(long, value_enum, default_value_t = Encapsulation::None)]
    pub encapsulation: Encapsulation,
    /// Recorded in FelixConfiguration `bpfEnabled`; honoured by the dataplane.
    #[arg(long, value_enum, default_value_t = Dataplane::Iptables)]
    pub dataplane: Dataplane,
    /// `--datastore sqlite|etcd` is the global `--datastore` flag, read by `lab::run`.
    #[arg(skip = DatastoreKind::Sqlite)]
    pub datastore: DatastoreKind,
    /// How nodes reach each other's pod blocks: `static` (the agents program routes) or
    /// `bgp` (BIRD on every node in a full mesh, and a home router on the underlay peered
    /// with every node; the outside host routes pod addresses through it, without NAT).
    #[arg(long, value_enum, default_value_t = Routing::Static)]
    pub routing: Routing,
    /// With `--routing bgp`: the home router's BGP implementation.
    #[arg(long, value_enum, default_value_t = RouterImpl::Frr)]
    pub router: RouterImpl,
    /// Apply these files (pods, namespaces, …) once the lab is up. Repeatable.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Also create a few demo pods (namespaces demo-a and demo-b, ports 80 and 81).
    #[arg(long)]
    pub demo: bool,
    /// How long to wait for agents and pods to become ready.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// Step-by-step progress on stderr.
struct Progress {
    start: Instant,
    step: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            step: Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        eprintln!("  ✓ {what} ({:.1}s)", self.step.elapsed().as_secs_f64());
        self.step = Instant::now();
    }
}

/// The file the agent writes once it has synced and programmed its node
/// (`serval_agent::AgentConfig::ready_path`); `up` waits for it, and fails with the end of
/// the agent's log when the agent exits first.
pub fn agent_ready_file(layout: &Layout, node: &str) -> PathBuf {
    layout.node_dir(node).join("agent.ready")
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    layout::validate_name(&args.name).map_err(Usage)?;
    if args.nodes == 0 || args.nodes > MAX_NODES {
        return Err(Usage(format!(
            "--nodes {} must be between 1 and {MAX_NODES}",
            args.nodes
        ))
        .into());
    }
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("`serval lab up` creates network namespaces and links: run it as root");
    }
    let cni_bin = cni_binary()?;
    let layout = Layout::new(&args.name);
    // Read and validate the files before anything is made.
    let mut extra = Vec::new();
    if !args.files.is_empty() {
        extra.extend(crate::input::read_resources(&args.files)?);
    }

    let index = reserve(&layout)?;
    eprintln!(
        "Creating lab {:?} ({} nodes, {}, encapsulation {}, {} dataplane, {} datastore, routing {}{})",
        args.name,
        args.nodes,
        args.ip_family,
        args.encapsulation,
        args.dataplane,
        args.datastore,
        args.routing,
        if args.routing == Routing::Bgp {
            format!(" with a {} home router", args.router)
        } else {
            String::new()
        }
    );
    let mut progress = Progress::new();
    match bring_up(&layout, &args, index, &cni_bin, extra, &mut progress).await {
        Ok(st) => {
            print_usage(&st, progress.start.elapsed());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("  ✗ {e:#}");
            eprintln!("Removing what was made of lab {:?}…", args.name);
            if let Err(down_err) = down::teardown(&layout).await {
                eprintln!(
                    "  ✗ cleanup: {down_err:#}; run `serval lab down --name {}`",
                    args.name
                );
            }
            Err(e.context(format!("lab {:?} did not come up", args.name)))
        }
    }
}

/// `serval-cni`, next to this binary.
fn cni_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the serval binary")?;
    let path = exe
        .parent()
        .map(|d| d.join("serval-cni"))
        .context("the serval binary has no directory")?;
    if !path.is_file() {
        anyhow::bail!(
            "the CNI plugin {} is missing: the lab needs serval-cni next to serval (build it with `cargo build -p serval-cni`)",
            path.display()
        );
    }
    Ok(path)
}

/// Creates the lab directory and picks a free subnet index, under a lock so that parallel
/// `lab up`s never pick the same one. An existing lab of that name is an error.
fn reserve(layout: &Layout) -> anyhow::Result<u16> {
    std::fs::create_dir_all(layout::LABS_DIR)
        .with_context(|| format!("creating {}", layout::LABS_DIR))?;
    let lock_path = Path::new(layout::LABS_DIR).join(".lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if layout.dir().exists() {
        return Err(Usage(format!(
            "lab {:?} already exists ({}); remove it with `serval lab down --name {}` or pick another --name",
            layout.name,
            layout.dir().display(),
            layout.name
        ))
        .into());
    }
    let others = layout::list_labs();
    if let Some(ns) = NetNs::list()?
        .into_iter()
        .find(|n| layout.owns_netns(n, &others))
    {
        return Err(Usage(format!(
            "network namespace {ns} of an earlier lab {:?} is still there; run `serval lab down --name {}` first",
            layout.name, layout.name
        ))
        .into());
    }
    let index = super::state::free_index(&layout.name)?;
    std::fs::create_dir_all(layout.dir())
        .with_context(|| format!("creating {}", layout.dir().display()))?;
    std::fs::write(layout.dir().join("index"), format!("{index}\n"))
        .context("recording the lab's subnet index")?;
    Ok(index)
}

pub(super) fn plan_state(layout: &Layout, args: &UpArgs, index: u16) -> (LabState, Plan) {
    let plan = Plan {
        index,
        family: args.ip_family,
        two_subnets: args.encapsulation == Encapsulation::VxlanCrossSubnet,
    };
    let mut bridge_addrs = Vec::new();
    for s in 0..plan.subnet_count() {
        bridge_addrs.extend(plan.addrs(s, HOST_ID_BRIDGE));
    }
    let nodes = (1..=args.nodes)
        .map(|k| {
            let name = format!("node{k}");
            let subnet = plan.node_subnet(k);
            NodeInfo {
                host: Host {
                    netns: layout.node_netns(&name),
                    host_veth: layout.host_veth(&k.to_string()),
                    addrs: plan.addrs(subnet, HOST_ID_NODE_BASE + k),
                },
                name,
                subnet,
                datastore_url: String::new(),
            }
        })
        .collect();
    let bgp = args.routing == Routing::Bgp;
    let router = (plan.two_subnets || bgp).then(|| Host {
        netns: layout.router_netns(),
        host_veth: layout.host_veth("r"),
        addrs: (0..plan.subnet_count())
            .flat_map(|s| plan.addrs(s, HOST_ID_ROUTER))
            .collect(),
    });
    let outside = Host {
        netns: layout.outside_netns(),
        host_veth: layout.host_veth("o"),
        addrs: plan.addrs(0, HOST_ID_OUTSIDE),
    };
    let st = LabState {
        name: layout.name.clone(),
        index,
        ip_family: args.ip_family,
        encapsulation: args.encapsulation,
        dataplane: args.dataplane,
        datastore: args.datastore,
        datastore_url: String::new(),
        bridge: layout.bridge(),
        bridge_addrs,
        nodes,
        outside: Some(outside),
        router,
        routing: args.routing,
        bgp_router: bgp.then_some(args.router),
        etcd: None,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    (st, plan)
}

/// Routes from a host in subnet `s` to the other subnet, via the router.
fn cross_subnet_routes(plan: &Plan, s: u8) -> Vec<(IpNet, IpAddr)> {
    if !plan.two_subnets {
        return Vec::new();
    }
    let other = 1 - s;
    plan.subnets(other)
        .into_iter()
        .zip(plan.addrs(s, HOST_ID_ROUTER))
        .map(|(dst, gw)| (dst, gw.addr()))
        .collect()
}

/// A node's default routes, as a real node has one: via the router of its subnet when the lab
/// has a router host, else via the `outside` host (the lab's upstream). Without them, a packet
/// to an address no route covers (a service VIP with no backends, say) would be dropped at
/// the routing decision instead of reaching the dataplane's reject rule.
fn default_routes(plan: &Plan, st: &LabState, subnet: u8) -> Vec<(IpNet, IpAddr)> {
    let gateways: Vec<IpNet> = if st.router.is_some() {
        plan.addrs(subnet, HOST_ID_ROUTER)
    } else if subnet == 0 {
        st.outside
            .as_ref()
            .map(|o| o.addrs.clone())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    gateways
        .iter()
        .map(|gw| {
            let any: IpNet = if gw.addr().is_ipv4() {
                "0.0.0.0/0".parse().expect("literal")
            } else {
                "::/0".parse().expect("literal")
            };
            (any, gw.addr())
        })
        .collect()
}

async fn bring_up(
    layout: &Layout,
    args: &UpArgs,
    index: u16,
    cni_bin: &Path,
    mut extra: Vec<serval_model::Resource>,
    p: &mut Progress,
) -> anyhow::Result<LabState> {
    let (mut st, plan) = plan_state(layout, args, index);
    st.save(layout)?;

    let root = Netlink::current().context("opening netlink in the root namespace")?;
    net::create_bridge(&root, &st.bridge, &st.bridge_addrs).await?;
    let subnets: Vec<String> = (0..plan.subnet_count())
        .flat_map(|s| plan.subnets(s))
        .map(|n| n.to_string())
        .collect();
    p.done(&format!(
        "underlay bridge {} ({})",
        st.bridge,
        subnets.join(", ")
    ));

    if let Some(router) = &st.router {
        let ns = net::create_host(&root, &st.bridge, router, true).await?;
        if plan.two_subnets {
            p.done(&format!(
                "router {} between the two underlay subnets",
                router.netns
            ));
        }
        if let Some(kind) = st.bgp_router {
            bgp::start_router(layout, &st, &ns, kind)?;
            p.done(&format!(
                "home router {} running {kind} (AS {ROUTER_AS}), peered with every node (AS {CLUSTER_AS})",
                router.netns
            ));
        }
    }

    let mut node_ns = Vec::new();
    for node in &st.nodes {
        let ns = net::create_host(&root, &st.bridge, &node.host, true).await?;
        let mut routes = cross_subnet_routes(&plan, node.subnet);
        routes.extend(default_routes(&plan, &st, node.subnet));
        net::add_routes(&ns, &routes).await?;
        node_ns.push(ns);
    }
    let shown: Vec<String> = st
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n.name,
                n.host
                    .addrs
                    .iter()
                    .map(|a| a.addr().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            )
        })
        .collect();
    p.done(&format!("nodes: {}", shown.join(", ")));

    if let Some(outside) = &st.outside {
        let ns = net::create_host(&root, &st.bridge, outside, false).await?;
        let mut routes = cross_subnet_routes(&plan, 0);
        // The pod CIDRs via node1, which forwards (natively, or into its VXLAN device); with
        // BGP via the home router, which learned every block from the nodes (no NAT).
        let gateway_addrs = match (&st.router, st.routing) {
            (Some(r), Routing::Bgp) => &r.addrs,
            _ => &st.nodes[0].host.addrs,
        };
        for cidr in resources::pool_cidrs(st.ip_family) {
            if let Some(gw) = resources::of_family(gateway_addrs, cidr.addr().is_ipv4()) {
                routes.push((cidr, gw));
            }
        }
        net::add_routes(&ns, &routes).await?;
        p.done(&format!(
            "outside host {} ({}), pod CIDRs routed via {}",
            outside.netns,
            outside
                .addrs
                .iter()
                .map(|a| a.addr().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if st.routing == Routing::Bgp {
                "the home router"
            } else {
                "node1"
            }
        ));
    }

    // The datastore.
    match st.datastore {
        DatastoreKind::Sqlite => {
            let url = format!("sqlite://{}", layout.sqlite_path().display());
            st.datastore_url = url.clone();
            for n in &mut st.nodes {
                n.datastore_url = url.clone();
            }
        }
        DatastoreKind::Etcd => {
            // One listen address per subnet (first family), so every node reaches it directly.
            let addrs: Vec<IpAddr> = (0..plan.subnet_count())
                .map(|s| plan.addrs(s, HOST_ID_BRIDGE)[0].addr())
                .collect();
            let info = etcd::start(layout, &addrs).await?;
            st.datastore_url = etcd::url(addrs[0], info.client_port);
            for n in &mut st.nodes {
                n.datastore_url = etcd::url(addrs[usize::from(n.subnet)], info.client_port);
            }
            st.etcd = Some(info);
        }
    }
    std::fs::write(layout.datastore_file(), format!("{}\n", st.datastore_url))
        .context("writing the lab's datastore file")?;
    st.save(layout)?;
    let client = serval_api::Client::open(&st.datastore_url)
        .await
        .with_context(|| format!("opening the lab datastore {}", st.datastore_url))?;
    let initial = resources::parse("lab defaults", &resources::initial_yaml(&st))?;
    let n = initial.len();
    client
        .apply(initial, ApplyMode::Apply)
        .await
        .context("storing the lab's IPPools, Nodes, Namespace and FelixConfiguration")?;
    p.done(&format!(
        "datastore {} with {n} resources (IPPools, Nodes, Namespace default, FelixConfiguration{})",
        st.datastore_url,
        if st.routing == Routing::Bgp {
            ", BGPConfiguration, BGPPeers to the home router"
        } else {
            ""
        }
    ));

    for node in &st.nodes {
        write_cni_dir(layout, &st, node, cni_bin)?;
    }
    p.done("CNI configuration and plugins per node");

    let exe = std::env::current_exe().context("locating the serval binary")?;
    for (node, ns) in st.nodes.iter().zip(&node_ns) {
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--node")
            .arg(&node.name)
            .arg("--datastore")
            .arg(&node.datastore_url)
            .arg("--lab-dir")
            .arg(layout.dir())
            .arg("--netns-prefix")
            .arg(layout.netns_prefix())
            .arg("--log-level")
            .arg("info");
        if let Some(cg) = super::cgroup::create(layout, &node.name)? {
            cmd.arg("--cgroup").arg(cg);
        }
        if st.routing == Routing::Bgp {
            // Short BGP timers: sessions up in a second or two, a dead peer noticed in 6 s.
            cmd.arg("--routing").arg("bgp").arg("--bgp-fast-timers");
        }
        procs::spawn_detached(
            cmd,
            Some(ns),
            &layout.agent_log(&node.name),
            &layout.agent_pid_file(&node.name),
        )
        .with_context(|| format!("starting the agent of {}", node.name))?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    for node in &st.nodes {
        wait_agent(layout, &node.name, deadline).await?;
    }
    p.done(&format!("{} agents running and ready", st.nodes.len()));
    if st.routing == Routing::Bgp {
        let n = bgp::wait_established(layout, &st, deadline).await?;
        p.done(&format!("{n} BGP sessions established"));
    }

    if args.demo {
        extra.extend(resources::parse(
            "demo pods",
            &resources::demo_yaml(&st.nodes),
        )?);
    }
    if !extra.is_empty() {
        let count = extra.len();
        client
            .apply(extra, ApplyMode::Apply)
            .await
            .context("applying the extra resources")?;
        let ready = pods::wait_ready(&client, deadline).await?;
        pods::wait_routes(&client, &node_ns, deadline).await?;
        pods::wait_programmed(&client, layout, deadline).await?;
        p.done(&format!(
            "applied {count} resources; {ready} pods ready, routes to them on every node"
        ));
    }
    Ok(st)
}

fn write_cni_dir(
    layout: &Layout,
    st: &LabState,
    node: &NodeInfo,
    cni_bin: &Path,
) -> anyhow::Result<()> {
    let conf_dir = layout.cni_conf_dir(&node.name);
    let bin_dir = layout.cni_bin_dir(&node.name);
    let pods_dir = layout.node_dir(&node.name).join("pods");
    for d in [&conf_dir, &bin_dir, &pods_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = layout.node_dir(&node.name).join("cni.log");
    let conf = conf_dir.join("10-serval.conflist");
    std::fs::write(
        &conf,
        resources::conflist(st, node, &log.display().to_string()),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    std::os::unix::fs::symlink(cni_bin, bin_dir.join("serval"))
        .with_context(|| format!("linking {}/serval", bin_dir.display()))?;
    // The reference plugins (portmap, tuning, …) for chained conflists.
    if let Ok(rd) = std::fs::read_dir("/usr/lib/cni") {
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "serval" {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), bin_dir.join(&name));
        }
    }
    Ok(())
}

async fn wait_agent(layout: &Layout, node: &str, deadline: Instant) -> anyhow::Result<()> {
    let ready = agent_ready_file(layout, node);
    let pid = procs::read_pid(&layout.agent_pid_file(node)).context("agent pid file missing")?;
    loop {
        if ready.exists() {
            return Ok(());
        }
        let log = layout.agent_log(node);
        if !procs::alive(pid) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!(
                "the agent of {node} exited; the end of {}:\n{}",
                log.display(),
                etcd::tail(&text, 20)
            );
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!(
                "the agent of {node} did not become ready (no {}); the end of {}:\n{}",
                ready.display(),
                log.display(),
                etcd::tail(&text, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_usage(st: &LabState, took: Duration) {
    let l = &st.name;
    println!(
        "Lab {l:?} is up ({:.1}s): {} nodes, {}, encapsulation {}, datastore {}.",
        took.as_secs_f64(),
        st.nodes.len(),
        st.ip_family,
        st.encapsulation,
        st.datastore_url
    );
    println!();
    println!(
        "  serval --lab {l} apply -f pods.yaml        # pods start on their node (spec.nodeName) or round-robin"
    );
    println!("  serval --lab {l} get pods -A -o wide       # node, IPs, readiness");
    println!("  serval lab matrix --name {l}               # every pod to every pod on port 80");
    println!("  serval lab probe --name {l} --from outside --to NS/POD --port 80");
    println!("  serval lab exec --name {l} NS/POD -- ip addr");
    println!("  serval lab status --name {l}");
    if st.routing == Routing::Bgp {
        println!("  serval node status --lab {l}               # BGP sessions of every node");
    }
    println!("  serval lab down --name {l}");
}
