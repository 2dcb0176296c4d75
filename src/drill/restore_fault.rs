//! Storage faults during restores (`restores.storage_fault`): the outage
//! is started the moment a restore reaches the scenario's phase, by a task
//! holding the environment's [`OutageSwitch`], so that `backup-fetch` or the
//! restored server's `wal-fetch` runs into it. A restore under a fault must
//! finish exactly or fail loudly; recovery ended early by a storage error
//! taken for the end of the archive is the failure this exists to catch
//! (WAL-G issue 1126), and the drill's verification against the ledger is
//! what catches it. With `restores.interrupt_fetch`, the fault is
//! `backup-fetch` killed mid-way instead, and the retry goes with `--force`
//! into the directory it left (restores go in place then).

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::env::zone::TargetTime;
use crate::env::{EnvError, Environment, OutageSwitch, RestorePhases, Restored, Unwatched};
use crate::report::{RestoreFaultRecord, RestoreRecord};
use crate::scenario::{RestoreFault, RestorePhase, Scenario};

/// The fault the scenario's restores meet, if any (validation allows each
/// only where the environment can inject it).
pub(super) fn injector(scenario: &Scenario, env: &dyn Environment) -> Option<Injector> {
    if scenario.restores.interrupt_fetch {
        return Some(Injector::Interrupt(FetchInterrupter::default()));
    }
    let fault = scenario.restores.storage_fault?;
    Some(Injector::Storage(FaultInjector::new(
        fault,
        env.outage_switch()?,
    )))
}

/// A fault for restores to meet.
pub(super) enum Injector {
    Storage(FaultInjector),
    Interrupt(FetchInterrupter),
}

impl Injector {
    /// What was injected, once it is over (None: nothing was).
    async fn finish(self) -> Option<Result<String, String>> {
        match self {
            Injector::Storage(i) => i.finish().await,
            Injector::Interrupt(i) => i.finish(),
        }
    }
}

impl RestorePhases for Injector {
    fn reached(&mut self, phase: RestorePhase) {
        match self {
            Injector::Storage(i) => i.reached(phase),
            Injector::Interrupt(i) => i.reached(phase),
        }
    }

    fn interrupt_fetch(&self) -> bool {
        matches!(self, Injector::Interrupt(_))
    }

    fn fetch_interrupted(&mut self, files: u64) {
        if let Injector::Interrupt(i) = self {
            i.fetch_interrupted(files);
        }
    }
}

/// Has the environment kill `backup-fetch` mid-way; remembers how far it
/// got.
#[derive(Debug, Default)]
pub(super) struct FetchInterrupter {
    /// Files written when it was killed.
    killed_at: Option<u64>,
}

impl FetchInterrupter {
    /// What was done: None when backup-fetch finished before it could be
    /// killed (a backup of fewer files than the kill waits for).
    fn finish(self) -> Option<Result<String, String>> {
        let files = self.killed_at?;
        Some(Ok(format!(
            "backup-fetch killed (SIGKILL) with {files} files written; retried with --force into the same directory"
        )))
    }
}

impl RestorePhases for FetchInterrupter {
    fn reached(&mut self, _: RestorePhase) {}

    fn interrupt_fetch(&self) -> bool {
        true
    }

    fn fetch_interrupted(&mut self, files: u64) {
        self.killed_at = Some(files);
    }
}

/// Restores `record`'s backup to `target` under `injector`'s fault, and
/// returns the restore verification must judge: the first attempt, or,
/// when it failed (loudly, as it may), a retry once the storage is back,
/// as an operator would, labelled `<label>-retry` in `record`. Says in
/// `record` what was injected and how the first attempt ended.
pub(super) async fn restore_under_fault(
    env: &mut dyn Environment,
    mut injector: Injector,
    target: Option<&TargetTime>,
    record: &mut RestoreRecord,
) -> Result<Restored, EnvError> {
    let label = record.label.clone();
    let first = env
        .restore(&label, &record.backup, target, &mut injector)
        .await;
    let injected = match injector.finish().await {
        None => return first,
        Some(Err(e)) => return Err(EnvError::Other(e)),
        Some(Ok(injected)) => injected,
    };
    // The typed failure says it in a line; the evidence (the server log)
    // would be the retry's to show if it failed too.
    let first_attempt_error = first.as_ref().err().map(|e| match e {
        EnvError::Restore { failure, .. } => failure.to_string(),
        e => e.to_string(),
    });
    record.storage_fault = Some(RestoreFaultRecord {
        injected,
        first_attempt_error,
    });
    if first.is_ok() {
        return first;
    }
    env.discard_restore(&label).await;
    record.label = format!("{label}-retry");
    env.restore(&record.label, &record.backup, target, &mut Unwatched)
        .await
}

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
            let (switch, mode, duration) = (
                Arc::clone(&self.switch),
                self.fault.mode,
                self.fault.duration,
            );
            self.running = Some(tokio::spawn(
                async move { switch.outage(mode, duration).await },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::OutageMode;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// Counts the outages it is asked for.
    #[derive(Default)]
    struct Counting(AtomicU32);

    #[async_trait::async_trait]
    impl OutageSwitch for Counting {
        async fn outage(&self, mode: OutageMode, duration: Duration) -> Result<String, EnvError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(format!("storage {} for {duration:?}", mode.as_str()))
        }
    }

    fn injector(during: RestorePhase, switch: &Arc<Counting>) -> FaultInjector {
        let fault = RestoreFault {
            during,
            mode: OutageMode::Errors,
            duration: Duration::from_millis(10),
        };
        FaultInjector::new(fault, Arc::clone(switch) as Arc<dyn OutageSwitch>)
    }

    #[tokio::test]
    async fn the_outage_starts_once_at_its_phase_and_not_before() {
        let switch = Arc::new(Counting::default());
        let mut i = injector(RestorePhase::Consistent, &switch);
        i.reached(RestorePhase::BackupFetch);
        i.reached(RestorePhase::WalReplay);
        assert!(i.running.is_none(), "started before its phase");
        i.reached(RestorePhase::Consistent);
        i.reached(RestorePhase::Consistent);
        let said = i.finish().await.expect("injected").unwrap();
        assert_eq!(switch.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            said,
            "storage errors for 10ms, as the restored server became consistent"
        );
    }

    #[test]
    fn an_interrupted_fetch_says_how_far_it_got_and_a_finished_one_nothing() {
        let mut i = FetchInterrupter::default();
        assert!(i.interrupt_fetch());
        assert!(FetchInterrupter::default().finish().is_none());
        i.fetch_interrupted(104);
        assert_eq!(
            i.finish().unwrap().unwrap(),
            "backup-fetch killed (SIGKILL) with 104 files written; retried with --force into the same directory"
        );
    }

    #[tokio::test]
    async fn a_restore_that_never_reaches_the_phase_meets_no_fault() {
        let switch = Arc::new(Counting::default());
        let mut i = injector(RestorePhase::Consistent, &switch);
        i.reached(RestorePhase::BackupFetch);
        assert!(i.finish().await.is_none());
        assert_eq!(switch.0.load(Ordering::SeqCst), 0);
    }
}
