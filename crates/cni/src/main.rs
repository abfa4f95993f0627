//! `serval-cni`: the CNI plugin binary. Environment and stdin in, result or error JSON out.

use std::io::{Read, Write};

fn main() {
    let vars = std::env::vars().collect();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => serval_cni::plugin::run(&vars, &stdin),
        Err(source) => {
            let err = serval_cni::error::PluginError::Stdin { source };
            let mut out = serde_json::to_vec(&err.to_json(serval_cni::spec::LATEST_VERSION))
                .unwrap_or_default();
            out.push(b'\n');
            serval_cni::plugin::Outcome {
                exit_code: 1,
                stdout: out,
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&outcome.stdout);
    let _ = stdout.flush();
    std::process::exit(outcome.exit_code);
}
