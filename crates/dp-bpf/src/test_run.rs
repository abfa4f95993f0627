//! Running a loaded program on a crafted packet with `BPF_PROG_TEST_RUN` (aya's
//! [`TestRun`]): the seam the program tests, the randomized differential test and a future
//! `serval trace` use. The kernel runs the real, verified program on a copy of the packet and
//! returns the verdict and the (possibly rewritten) bytes; map side effects are real.
//!
//! The packet starts at the Ethernet header. `skb->ifindex` is the loopback interface of the
//! caller's namespace (1), so endpoint entries for a test run are keyed by 1.

use aya::programs::{TestRun, TestRunOptions};

use crate::{attach::Hook, error::TestRunError, loader::Dataplane};

/// tc verdict: pass the packet on.
pub const TC_ACT_OK: i32 = 0;
/// tc verdict: drop the packet.
pub const TC_ACT_SHOT: i32 = 2;
/// tc verdict: the packet was redirected (`bpf_redirect`), e.g. a TCP RST / ICMP port
/// unreachable sent back to the client of a service without backends.
pub const TC_ACT_REDIRECT: i32 = 7;

/// `skb->ifindex` during a test run.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The program's return value (`TC_ACT_*`).
    pub verdict: i32,
    /// The packet after the program (rewrites included).
    pub packet: Vec<u8>,
}

impl Dataplane {
    /// Runs the program of `hook` once on `packet`.
    pub fn test_run(&self, hook: Hook, packet: &[u8]) -> Result<RunOutcome, TestRunError> {
        let program = hook.program();
        let run_err = |source| TestRunError::Run {
            program,
            len: packet.len(),
            source,
        };
        let tc = self
            .program(program)
            .map_err(|source| TestRunError::Program { program, source })?;
        // Programs may grow a packet (encapsulation later); leave room.
        let mut out = vec![0u8; packet.len() + 256];
        let result = tc
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(run_err)?;
        out.truncate(result.data_size_out as usize);
        Ok(RunOutcome {
            verdict: result.return_value as i32,
            packet: out,
        })
    }
}
