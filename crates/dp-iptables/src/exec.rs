//! Running the iptables and ipset tools inside a network namespace.
//!
//! **Namespace choice:** every command is spawned from a thread that entered the target
//! namespace through [`serval_sys::NetNs::run`]; a child process inherits the namespaces of
//! the thread that creates it, so `iptables-restore` and `ipset` act on that namespace's
//! netfilter tables and sets. The caller's thread never moves and no `unsafe` `pre_exec` is
//! needed. With no namespace given, commands run in the caller's own namespace.
//!
//! The xtables lock: `iptables-restore` is always run with `-w` (wait for the lock instead of
//! failing when another writer holds it).

use std::{
    io::{self, Write as _},
    process::{Command, Stdio},
};

use serval_sys::NetNs;

/// Seconds `iptables-restore -w` waits for the xtables lock.
pub const XTABLES_WAIT_SECS: &str = "10";

/// Running a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Could not enter the namespace.
    #[error("could not enter network namespace {netns} to run {program}")]
    Netns {
        /// The tool.
        program: &'static str,
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: Box<serval_sys::Error>,
    },
    /// The program could not be started or talked to.
    #[error(
        "could not run {program} in {netns}: {source}; is the iptables/ipset package installed \
         and are we root?"
    )]
    Spawn {
        /// The tool.
        program: &'static str,
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} {failure}")]
    Failed {
        /// The tool.
        program: &'static str,
        /// What happened.
        failure: Box<Failure>,
    },
}

/// How a tool failed.
#[derive(Debug)]
pub struct Failure {
    /// Its arguments, joined.
    pub args: String,
    /// The namespace.
    pub netns: String,
    /// Exit status.
    pub status: String,
    /// What it printed on stderr (trimmed).
    pub stderr: String,
    /// The input line the tool complained about, when it named one.
    pub offending_line: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed in {} ({}): {}",
            self.args, self.netns, self.status, self.stderr
        )?;
        if let Some(line) = &self.offending_line {
            write!(f, " [input line: {line}]")?;
        }
        Ok(())
    }
}

/// Runs tools in one namespace (or the caller's).
#[derive(Debug)]
pub struct Exec {
    netns: Option<NetNs>,
}

impl Exec {
    /// Commands run in the caller's namespace.
    pub fn current() -> Self {
        Self { netns: None }
    }

    /// Commands run in `netns`.
    pub fn in_netns(netns: NetNs) -> Self {
        Self { netns: Some(netns) }
    }

    /// How errors name the namespace.
    pub fn netns_label(&self) -> String {
        self.netns.as_ref().map_or_else(
            || "the current network namespace".to_owned(),
            |ns| ns.label().to_string(),
        )
    }

    /// Runs `program args` with `stdin` as input and returns its stdout.
    pub fn run(
        &self,
        program: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ExecError> {
        tracing::trace!(program, ?args, input = stdin, "running");
        let run = || run_here(program, args, stdin);
        let result = match &self.netns {
            None => run(),
            Some(ns) => ns.run(run).map_err(|source| ExecError::Netns {
                program,
                netns: self.netns_label(),
                source: Box::new(source),
            })?,
        };
        let (status, stdout, stderr) = result.map_err(|source| ExecError::Spawn {
            program,
            netns: self.netns_label(),
            source,
        })?;
        if status.success() {
            return Ok(stdout);
        }
        let stderr = stderr.trim().to_owned();
        let offending_line = stdin.and_then(|input| {
            let n: usize = stderr
                .split("line:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .trim_end_matches('.')
                .parse()
                .ok()?;
            input.lines().nth(n.checked_sub(1)?).map(str::to_owned)
        });
        Err(ExecError::Failed {
            program,
            failure: Box::new(Failure {
                args: args.join(" "),
                netns: self.netns_label(),
                status: status.to_string(),
                stderr,
                offending_line,
            }),
        })
    }
}

fn run_here(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> io::Result<(std::process::ExitStatus, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Feed stdin from another thread so a chatty child cannot deadlock us on a full pipe.
    let output = std::thread::scope(|scope| {
        let writer = child.stdin.take().map(|mut pipe| {
            let input = stdin.unwrap_or_default();
            scope.spawn(move || pipe.write_all(input.as_bytes()))
        });
        let output = child.wait_with_output();
        if let Some(writer) = writer {
            match writer.join() {
                Ok(Ok(())) => {}
                // The child exiting early closes the pipe; its exit status tells why.
                Ok(Err(err)) if err.kind() == io::ErrorKind::BrokenPipe => {}
                Ok(Err(err)) => return Err(err),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        output
    })?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_failures_are_reported() {
        let exec = Exec::current();
        assert_eq!(exec.run("cat", &[], Some("a\nb\n")).unwrap(), "a\nb\n");
        let err = exec
            .run(
                "sh",
                &[
                    "-c",
                    "cat >/dev/null; echo 'Error occurred at line: 2' >&2; exit 3",
                ],
                Some("one\ntwo\nthree\n"),
            )
            .unwrap_err();
        let ExecError::Failed { failure, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(failure.offending_line.as_deref(), Some("two"));
        assert!(failure.stderr.contains("line: 2"));
        assert!(err.to_string().contains("[input line: two]"), "{err}");
        let err = exec.run("serval-no-such-tool", &[], None).unwrap_err();
        assert!(matches!(err, ExecError::Spawn { .. }), "{err:?}");
    }
}
