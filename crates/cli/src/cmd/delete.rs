//! `serval delete -f FILE` and `serval delete KIND NAME [-n NS]`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serval_model::{Kind, ResourceKey};

use crate::datastore::Selection;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kind (plural, singular or short form) when deleting by name.
    pub kind: Option<String>,
    /// Names of the resources to delete.
    pub names: Vec<String>,
    /// Delete the resources named in these files (directories and - work as for apply).
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "names"])]
    pub files: Vec<String>,
    /// Namespace of namespaced resources named on the command line.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Succeed when a resource does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(ds: &Selection, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let keys: Vec<ResourceKey> = if !args.files.is_empty() {
        crate::input::read_resources(&args.files)?
            .iter()
            .map(|r| r.key())
            .collect()
    } else {
        let kind_name = args
            .kind
            .as_deref()
            .context("give KIND NAME... or -f FILE")?;
        let kind = parse_kind(kind_name)?;
        if args.names.is_empty() {
            anyhow::bail!("give the name(s) of the {kind_name} to delete");
        }
        args.names
            .iter()
            .map(|name| ResourceKey {
                kind,
                namespace: kind.is_namespaced().then(|| args.namespace.clone()),
                name: name.clone(),
            })
            .collect()
    };
    let client = ds.client().await?;
    for key in client.delete(&keys, args.ignore_not_found).await? {
        println!("{} deleted", crate::output::key_display(&key));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::from_cli_name(s).with_context(|| {
        let names: Vec<&str> = serval_model::kind::KINDS.iter().map(|i| i.plural).collect();
        format!(
            "unknown resource type {s:?}; known types: {}",
            names.join(", ")
        )
    })
}
