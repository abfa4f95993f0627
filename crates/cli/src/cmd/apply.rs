//! `serval apply -f` and `serval create -f`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serval_api::{ApplyMode, Outcome};
use serval_model::ResourceKey;

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
    write_outcomes(&mut out, &outcomes)?;
    out.flush()?;
    drop(out);
    // Closing the datastore is not skipped (sqlite checkpoints a WAL the last connection leaves).
    drop(client);
    std::mem::forget((input, spent, outcomes));
    Ok(ExitCode::SUCCESS)
}

/// One line per outcome: the key as [`crate::output::key_display`] shows it, then what
/// happened. The kind's part is formatted once per run of one kind, not once per line (50,000
/// lines were 150,000 allocations).
fn write_outcomes(
    out: &mut impl Write,
    outcomes: &[(ResourceKey, Outcome)],
) -> std::io::Result<()> {
    let mut prefix: Option<(serval_model::Kind, String)> = None;
    for (key, outcome) in outcomes {
        let kind_part = match &prefix {
            Some((kind, part)) if *kind == key.kind => part,
            _ => {
                // `kind/` (`kind.group/`): the display of a nameless cluster-wide key.
                let part = crate::output::key_display(&ResourceKey {
                    kind: key.kind,
                    namespace: None,
                    name: String::new(),
                });
                &prefix.insert((key.kind, part)).1
            }
        };
        out.write_all(kind_part.as_bytes())?;
        out.write_all(key.name.as_bytes())?;
        if let Some(ns) = &key.namespace {
            write!(out, " (namespace {ns})")?;
        }
        writeln!(out, " {}", outcome.as_str())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serval_model::Kind;

    #[test]
    fn outcome_lines_show_keys_as_key_display_does() {
        let outcomes = vec![
            (
                ResourceKey::new(Kind::Service, Some("web"), "a"),
                Outcome::Created,
            ),
            (
                ResourceKey::new(Kind::Service, Some("db"), "b"),
                Outcome::Configured,
            ),
            (
                ResourceKey::new(Kind::IPPool, None, "pool"),
                Outcome::Unchanged,
            ),
            (
                ResourceKey::new(Kind::Namespace, None, "web"),
                Outcome::Created,
            ),
            (ResourceKey::new(Kind::Service, None, "c"), Outcome::Created),
            (
                ResourceKey::new(Kind::NetworkPolicy, Some("web"), "p"),
                Outcome::Configured,
            ),
        ];
        let mut out = Vec::new();
        write_outcomes(&mut out, &outcomes).unwrap();
        let expected: String = outcomes
            .iter()
            .map(|(key, outcome)| {
                format!("{} {}\n", crate::output::key_display(key), outcome.as_str())
            })
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert!(
            expected.contains("ippool.projectcalico.org/pool unchanged\n"),
            "{expected}"
        );
        assert!(
            expected.starts_with("service/a (namespace web) created\n"),
            "{expected}"
        );
    }
}
