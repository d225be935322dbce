//! Ctrl-C and SIGTERM: the handlers only raise a flag. The demo checks it
//! between steps (each bounded to well under a second) and returns early,
//! so every guard is dropped normally: processes killed, cgroups, network
//! namespaces and kernel programs removed.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};

/// The error a step returns when the user interrupted the demo.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub(crate) struct Interrupted;

/// The raised-flag handle.
#[derive(Clone, Debug)]
pub(crate) struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Installs the SIGINT, SIGTERM and SIGHUP handlers.
    pub(crate) fn install() -> Result<Stop> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(signal, Arc::clone(&flag))
                .with_context(|| format!("installing the handler of signal {signal}"))?;
        }
        Ok(Stop(flag))
    }

    /// `Err(Interrupted)` once a signal arrived.
    pub(crate) fn check(&self) -> Result<(), Interrupted> {
        if self.0.load(Ordering::SeqCst) {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}
