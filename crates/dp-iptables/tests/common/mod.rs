//! The golden fixture: `tests/golden/cluster.yaml` plus the CNI records of the n1 pods.

use std::path::PathBuf;

use serval_calc::{Model, desired_state};
use serval_dp_iptables::{Rendering, render::render};
use serval_model::{Resource, workloadendpoint::WorkloadEndpoint};

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The fixture cluster's model (with the CNI records of the n1 pods).
pub fn model() -> Model {
    let text = std::fs::read_to_string(golden_dir().join("cluster.yaml")).unwrap();
    let mut resources = serval_model::parse_documents("cluster.yaml", &text)
        .unwrap_or_else(|e| panic!("bad fixture:\n{e}"));
    // The CNI plugin's records for the two pods on n1.
    let weps: Vec<Resource> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Pod(pod) => {
                let (iface, ips) = match pod.metadata.name.as_str() {
                    "a" => ("sva1", ["10.244.1.1/32", "fd00:244::1:1/128"]),
                    "b" => ("svb1", ["10.244.1.2/32", "fd00:244::1:2/128"]),
                    _ => return None,
                };
                let ips = ips.iter().map(|n| n.parse().unwrap()).collect();
                let mut wep = WorkloadEndpoint::for_pod(pod, "n1", "cid", iface, ips);
                wep.spec.ready = true;
                Some(Resource::WorkloadEndpoint(wep))
            }
            _ => None,
        })
        .collect();
    resources.extend(weps);
    Model::from_resources(resources)
}

/// The fixture rendered for node n1.
pub fn rendering() -> Rendering {
    render(&desired_state(&model(), Some("n1")))
}
