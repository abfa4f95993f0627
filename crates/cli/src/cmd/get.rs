//! `serval get KIND [NAME] [-n NS | -A] [-o table|wide|yaml|json]`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serval_model::ResourceKey;

use crate::cmd::delete::parse_kind;
use crate::datastore::Selection;
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind: plural, singular or short form (pods, po, svc, netpol, gnp, ippools, ...).
    pub kind: String,
    /// Names to show (default: all).
    pub names: Vec<String>,
    /// Namespace (namespaced kinds).
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Only resources whose labels match this selector (Calico syntax, e.g. "app == 'web'").
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

pub async fn run(ds: &Selection, args: GetArgs) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(&args.kind)?;
    let client = ds.client().await?;
    let namespace =
        (kind.is_namespaced() && !args.all_namespaces).then_some(args.namespace.as_str());
    let mut items = Vec::new();
    if args.names.is_empty() {
        items = client.list(kind, namespace).await?.0;
    } else {
        for name in &args.names {
            let key = ResourceKey {
                kind,
                namespace: kind.is_namespaced().then(|| args.namespace.clone()),
                name: name.clone(),
            };
            match client.get(&key).await? {
                Some(r) => items.push(r),
                None => anyhow::bail!("{} not found", output::key_display(&key)),
            }
        }
    }
    if let Some(sel) = &args.selector {
        let sel = serval_model::selector::Selector::parse(sel)
            .map_err(|e| anyhow::anyhow!("--selector {sel:?}: {e}"))?;
        items.retain(|r| sel.matches(&r.meta().labels));
    }
    let single = !args.names.is_empty() && args.names.len() == 1;
    match args.output {
        Format::Json => println!("{}", output::to_json(&items, single)?),
        Format::Yaml => print!("{}", output::to_yaml(&items, single)?),
        Format::Table | Format::Wide => {
            if items.is_empty() {
                match namespace {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found."),
                }
            } else {
                let extra = output::Extra::load(&client, kind, args.output == Format::Wide).await?;
                print!(
                    "{}",
                    output::table(
                        kind,
                        &items,
                        args.all_namespaces && kind.is_namespaced(),
                        args.output == Format::Wide,
                        &extra
                    )
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
