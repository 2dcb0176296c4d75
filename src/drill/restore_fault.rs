//! Storage faults during restores (`restores.storage_fault`): the outage
//! is started the moment a restore reaches the scenario's phase, by a task
//! holding the environment's [`OutageSwitch`], so that `backup-fetch` or the
//! restored server's `wal-fetch` runs into it. A restore under a fault must
//! finish exactly or fail loudly; recovery ended early by a storage error
//! taken for the end of the archive is the failure this exists to catch
//! (WAL-G issue 1126), and the drill's verification against the ledger is
//! what catches it.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::env::{EnvError, OutageSwitch, RestorePhases};
use crate::scenario::{RestoreFault, RestorePhase};

/// Starts `fault` when the restore reaches its phase, once.
pub(super) struct FaultInjector {
    fault: RestoreFault,
    switch: Arc<dyn OutageSwitch>,
    running: Option<JoinHandle<Result<String, EnvError>>>,
}

impl FaultInjector {
    pub(super) fn new(fault: RestoreFault, switch: Arc<dyn OutageSwitch>) -> FaultInjector {
        FaultInjector {
            fault,
            switch,
            running: None,
        }
    }

    /// Waits for the outage to end (the storage serves again) and says
    /// what was injected: None when the restore never reached the phase,
    /// or an error when the outage could not be injected or ended.
    pub(super) async fn finish(self) -> Option<Result<String, String>> {
        let outcome = self.running?.await;
        let from = match self.fault.during {
            RestorePhase::BackupFetch => "as backup-fetch started",
            RestorePhase::WalReplay => "as the restored server started",
            RestorePhase::Consistent => "as the restored server became consistent",
        };
        Some(match outcome {
            Ok(Ok(how)) => Ok(format!("{how}, {from}")),
            Ok(Err(e)) => Err(format!("injecting the storage fault failed: {e}")),
            Err(e) => Err(format!("the storage fault's task failed: {e}")),
        })
    }
}

impl RestorePhases for FaultInjector {
    fn reached(&mut self, phase: RestorePhase) {
        if phase == self.fault.during && self.running.is_none() {
            let (switch, mode, duration) =
                (Arc::clone(&self.switch), self.fault.mode, self.fault.duration);
            self.running = Some(tokio::spawn(
                async move { switch.outage(mode, duration).await },
            ));
        }
    }
}
