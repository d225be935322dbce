//! `BPF_PROG_TEST_RUN` of the `cgroup_skb` programs: the kernel's verdict
//! on a hand-built packet, without attaching anything. In a test run,
//! `bpf_skb_cgroup_id` reports the calling process's cgroup.

use std::time::Duration;

use aya::programs::{CgroupSkb, TestRun, TestRunOptions};
use enforcer_common::verdict::Direction;

use super::{
    Dataplane,
    error::{DataplaneError, Result},
};

/// What one test run returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The program's return value: 1 pass, 0 drop.
    pub verdict: u32,
    /// Average time per run, as measured by the kernel.
    pub duration: Duration,
}

impl TestRunOutcome {
    pub const fn passed(&self) -> bool {
        self.verdict == 1
    }
}

/// An Ethernet frame around an IP packet (the test run strips the
/// Ethernet header before the program sees the packet).
pub fn ethernet_frame(ip_packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = match ip_packet.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    let mut frame = Vec::with_capacity(14 + ip_packet.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(ip_packet);
    frame
}

impl Dataplane {
    /// Runs the egress or ingress program once on `ip_packet` (starting at
    /// the IP header).
    pub fn test_run_skb(&self, direction: u8, ip_packet: &[u8]) -> Result<TestRunOutcome> {
        self.test_run_skb_repeat(direction, ip_packet, 1)
    }

    /// Runs the program `repeat` times on the same packet; the duration is
    /// the kernel's average per run. The first run creates the flow, so the
    /// later ones measure the per-packet fast path.
    pub fn test_run_skb_repeat(
        &self,
        direction: u8,
        ip_packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let program = if direction == Direction::Egress as u8 {
            "enforcer_egress"
        } else {
            "enforcer_ingress"
        };
        let err = |source| DataplaneError::TestRunFailed {
            program,
            source: Box::new(source),
        };
        let prog: &CgroupSkb = self
            .ebpf
            .program(program)
            .ok_or(DataplaneError::MissingProgram(program))?
            .try_into()
            .map_err(err)?;
        let frame = ethernet_frame(ip_packet);
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(err)?;
        Ok(TestRunOutcome {
            verdict: result.return_value,
            duration: result.duration,
        })
    }
}
