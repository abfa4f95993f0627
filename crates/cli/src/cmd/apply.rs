//! `serval apply -f` and `serval create -f`.

use std::io::Write;
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
    let started = std::time::Instant::now();
    let resources = crate::input::read_resources(&args.files)?;
    if resources.is_empty() {
        anyhow::bail!("no resources found in {}", args.files.join(", "));
    }
    let parsed = started.elapsed();
    let client = ds.client().await?;
    let opened = started.elapsed();
    let outcomes = client.apply(resources, mode).await?;
    // Where the command's time goes (`serval --log-level serval=debug apply ...`).
    tracing::debug!(
        resources = outcomes.len(),
        read_parse_ms = parsed.as_secs_f64() * 1e3,
        open_ms = (opened - parsed).as_secs_f64() * 1e3,
        apply_ms = (started.elapsed() - opened).as_secs_f64() * 1e3,
        "apply"
    );
    // One write for all lines (stdout is line-buffered: 50,000 outcomes were 50,000 writes).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (key, outcome) in outcomes {
        writeln!(
            out,
            "{} {}",
            crate::output::key_display(&key),
            outcome.as_str()
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
