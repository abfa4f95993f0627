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
    // The input stays referenced here, and what the apply built comes back (`spent`): they and
    // the outcomes are left to the process exit below instead of being freed (at 50,000
    // Services, ~10 ms of CPU that used to run after the commit, when the agents start on it).
    let input = std::sync::Arc::new(resources);
    let (outcomes, spent) = client
        .apply_keeping(std::sync::Arc::clone(&input), mode)
        .await?;
    // Where the command's time goes (`serval --log-level serval=debug apply ...`).
    tracing::debug!(
        resources = outcomes.len(),
        read_parse_ms = parsed.as_secs_f64() * 1e3,
        open_ms = (opened - parsed).as_secs_f64() * 1e3,
        apply_ms = (started.elapsed() - opened).as_secs_f64() * 1e3,
        "apply"
    );
    // Lines in 64 KiB writes (a pipe's capacity): stdout is line-buffered, so 50,000 outcomes
    // were 50,000 writes, and a default BufWriter's 8 KiB were 430. The first write leaves
    // promptly after the commit (a bench takes the first byte as the end of the write).
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    for (key, outcome) in &outcomes {
        writeln!(
            out,
            "{} {}",
            crate::output::key_display(key),
            outcome.as_str()
        )?;
    }
    out.flush()?;
    drop(out);
    // Closing the datastore is not skipped (sqlite checkpoints a WAL the last connection leaves).
    drop(client);
    std::mem::forget((input, spent, outcomes));
    Ok(ExitCode::SUCCESS)
}
