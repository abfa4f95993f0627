//! `serval apply -f` and `serval create -f`.

use std::process::ExitCode;

use clap::Args;
use serval_api::ApplyMode;

use crate::datastore::Selection;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A file, a directory of .yaml/.yml/.json files, or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

pub async fn run(ds: &Selection, args: ApplyArgs, mode: ApplyMode) -> anyhow::Result<ExitCode> {
    let resources = crate::input::read_resources(&args.files)?;
    if resources.is_empty() {
        anyhow::bail!("no resources found in {}", args.files.join(", "));
    }
    let client = ds.client().await?;
    let outcomes = client.apply(resources, mode).await?;
    for (key, outcome) in outcomes {
        println!("{} {}", crate::output::key_display(&key), outcome.as_str());
    }
    Ok(ExitCode::SUCCESS)
}
