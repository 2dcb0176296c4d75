//! Running the writers: one tokio task and one connection per writer,
//! paced by an interval, stopped by the deadline or the handle, and ended
//! (not panicking) by the first failed commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, Interval, MissedTickBehavior};
use tokio_postgres::error::Severity;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::ddl::DdlLog;
use super::items::{ItemModel, ItemOp, Mix, ITEMS, SWEEPER};
use super::{payload, pg_err, Ledger, LedgerEntry, Outcome, WorkloadError, WorkloadSpec, TABLE};
use crate::backup::pg::pg_error_text;

/// How long a commit in flight at the stop or the deadline may still take
/// before it is recorded as [`Outcome::Unknown`].
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the handle asks of the writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    Run,
    Pause,
    Stop,
}

/// Live counters across writers.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    acked: AtomicU64,
    vacuums: AtomicU64,
}

/// What one writer task returns.
#[derive(Debug)]
struct WriterRun {
    entries: Vec<LedgerEntry>,
    error: Option<String>,
}

/// A running workload. Dropping it stops the writers.
#[derive(Debug)]
pub struct WorkloadHandle {
    spec: WorkloadSpec,
    started_at: DateTime<Utc>,
    control: watch::Sender<Control>,
    /// What the handle asks of the sweeper: Pause but while a backup runs.
    sweep: Arc<watch::Sender<Control>>,
    progress: Arc<Progress>,
    tasks: Vec<(u32, JoinHandle<WriterRun>)>,
    /// The task running `VACUUM (FREEZE)` of a mixed workload.
    vacuum: Option<JoinHandle<()>>,
    /// The task running DDL (see [`super::ddl`]).
    ddl: Option<JoinHandle<DdlLog>>,
}

/// Starts `spec.writers` writers connecting with `config`, from now until
/// `spec.duration` has passed or [`WorkloadHandle::stop`]. Call within a
/// tokio runtime, after [`super::prepare`].
pub fn start(config: Config, spec: WorkloadSpec) -> Result<WorkloadHandle, WorkloadError> {
    start_from(config, spec, &BTreeMap::new())
}

/// [`start`] on a table that already holds rows: writer `w` continues at
/// seq `first_seq[w]` (1 for a writer not listed), e.g. on a server
/// restored from the workload's earlier commits.
pub fn start_from(
    config: Config,
    spec: WorkloadSpec,
    first_seq: &BTreeMap<u32, u64>,
) -> Result<WorkloadHandle, WorkloadError> {
    if spec.writers == 0 || spec.rate_per_second == 0 {
        return Err(WorkloadError::InvalidSpec(
            "writers and rate_per_second must be at least 1".into(),
        ));
    }
    if i32::try_from(spec.writers).is_err() {
        return Err(WorkloadError::InvalidSpec(format!(
            "{} writers do not fit the table's int column",
            spec.writers
        )));
    }
    // Each writer commits every writers/rate seconds; writer i starts i/writers
    // of a period late, so the commits interleave evenly.
    let period_ns = 1_000_000_000u128 * u128::from(spec.writers) / u128::from(spec.rate_per_second);
    let period = Duration::from_nanos(u64::try_from(period_ns).unwrap_or(u64::MAX).max(1));
    let begin = Instant::now();
    let started_at = now();
    let deadline = begin + spec.duration;
    let (control, control_rx) = watch::channel(Control::Run);
    let (sweep, sweep_rx) = watch::channel(Control::Pause);
    let progress = Arc::new(Progress::default());
    let config = Arc::new(config);
    let tasks = spec
        .writer_ids()
        .map(|id| {
            let (first_tick, period, control) = if id == SWEEPER {
                // Four times the workload's rate, so pages change all through
                // the backup.
                (
                    begin,
                    (period / spec.writers / 4).max(MIN_SWEEP_PERIOD),
                    sweep_rx.clone(),
                )
            } else {
                (
                    begin + period * (id - 1) / spec.writers,
                    period,
                    control_rx.clone(),
                )
            };
            let writer = Writer {
                id,
                first_seq: first_seq.get(&id).copied().unwrap_or(1).max(1),
                seed: spec.seed,
                mix: spec.mix,
                payload_bytes: spec.payload_bytes,
                first_tick,
                period,
                deadline,
                control,
                progress: Arc::clone(&progress),
            };
            let config = Arc::clone(&config);
            (id, tokio::spawn(async move { writer.run(&config).await }))
        })
        .collect();
    let vacuum = spec.mix.and_then(|m| m.vacuum_freeze_every).map(|every| {
        let (config, control) = (Arc::clone(&config), control_rx.clone());
        let progress = Arc::clone(&progress);
        tokio::spawn(vacuum_freeze(config, every, deadline, control, progress))
    });
    let ddl = spec.mix.and_then(|m| m.ddl_every).map(|every| {
        let (config, control) = (Arc::clone(&config), control_rx.clone());
        tokio::spawn(super::ddl::run(config, every, deadline, control))
    });
    Ok(WorkloadHandle {
        spec,
        started_at,
        control,
        sweep: Arc::new(sweep),
        progress,
        tasks,
        vacuum,
        ddl,
    })
}

/// Runs `VACUUM (FREEZE)` on the workload tables every `every` until the
/// stop or the deadline, so visibility-map and freeze bits are set while
/// the writers clear them (and a backup can land between the two). Ends
/// quietly when the server goes away (a disaster is not its business).
async fn vacuum_freeze(
    config: Arc<Config>,
    every: Duration,
    deadline: Instant,
    mut control: watch::Receiver<Control>,
    progress: Arc<Progress>,
) {
    let Ok((client, connection)) = config.connect(NoTls).await else {
        return;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let sql = super::vacuum_freeze_sql(true);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop_or_deadline(&mut control, deadline) => return,
        }
        if let Err(e) = client.batch_execute(&sql).await {
            tracing::debug!("workload VACUUM (FREEZE) ended: {}", pg_error_text(&e));
            return;
        }
        progress.vacuums.fetch_add(1, Ordering::Relaxed);
    }
}

impl WorkloadHandle {
    /// When the workload started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// Transactions sent so far.
    pub fn rows_sent(&self) -> u64 {
        self.progress.sent.load(Ordering::Relaxed)
    }

    /// Transactions acknowledged so far.
    pub fn rows_acked(&self) -> u64 {
        self.progress.acked.load(Ordering::Relaxed)
    }

    /// `VACUUM (FREEZE)` runs of a mixed workload so far.
    pub fn vacuums(&self) -> u64 {
        self.progress.vacuums.load(Ordering::Relaxed)
    }

    /// Holds the writers after their commits in flight; the deadline does
    /// not move.
    pub fn pause(&self) {
        set_unless_stopped(&self.control, Control::Pause);
    }

    /// Lets paused writers go on.
    pub fn resume(&self) {
        set_unless_stopped(&self.control, Control::Run);
    }

    /// Asks the writers to stop after their commits in flight (which get
    /// [`STOP_GRACE`] to finish).
    pub fn stop(&self) {
        self.control.send_replace(Control::Stop);
        self.sweep.send_replace(Control::Stop);
    }

    /// Runs the sweeper (writer [`SWEEPER`], when the mix has one) until
    /// the returned guard is dropped: hold it while a backup runs.
    pub fn sweep(&self) -> Sweep {
        set_unless_stopped(&self.sweep, Control::Run);
        Sweep(Arc::clone(&self.sweep))
    }

    /// Waits for every writer to end (at the deadline, after
    /// [`WorkloadHandle::stop`], or at its first failed commit) and returns
    /// the ledger.
    pub async fn join(mut self) -> Ledger {
        let mut entries = Vec::new();
        let mut errors = BTreeMap::new();
        // The sweeper last: it ends once the writers have (a dead server
        // ends them, while it may be waiting for the next backup).
        let mut tasks = std::mem::take(&mut self.tasks);
        tasks.sort_by_key(|(id, _)| *id == SWEEPER);
        for (id, task) in tasks {
            if id == SWEEPER {
                self.sweep.send_replace(Control::Stop);
            }
            match task.await {
                Ok(run) => {
                    entries.extend(run.entries);
                    if let Some(e) = run.error {
                        errors.insert(id, e);
                    }
                }
                Err(e) => {
                    errors.insert(id, format!("writer task ended abnormally: {e}"));
                }
            }
        }
        if let Some(vacuum) = self.vacuum.take() {
            let _ = vacuum.await;
        }
        let ddl = match self.ddl.take() {
            Some(task) => task.await.unwrap_or_else(|e| DdlLog {
                events: Vec::new(),
                error: Some(format!("DDL task ended abnormally: {e}")),
            }),
            None => DdlLog::default(),
        };
        Ledger::new(self.spec.clone(), self.started_at, entries, errors).with_ddl(ddl)
    }
}

/// Shortest time between two of the sweeper's commits.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(2);

/// The sweeper runs while this lives (see [`WorkloadHandle::sweep`]).
#[derive(Debug)]
#[must_use = "the sweeper pauses when this is dropped"]
pub struct Sweep(Arc<watch::Sender<Control>>);

impl Drop for Sweep {
    fn drop(&mut self) {
        set_unless_stopped(&self.0, Control::Pause);
    }
}

/// Sets `control` to `to`, unless it says stop.
fn set_unless_stopped(control: &watch::Sender<Control>, to: Control) {
    control.send_if_modified(|c| {
        let change = *c != Control::Stop && *c != to;
        if change {
            *c = to;
        }
        change
    });
}

impl Drop for WorkloadHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Now, at PostgreSQL's resolution (see the ledger's module docs).
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// One writer's settings and state.
struct Writer {
    id: u32,
    /// The seq of the writer's first row.
    first_seq: u64,
    seed: u64,
    mix: Option<Mix>,
    payload_bytes: usize,
    first_tick: Instant,
    period: Duration,
    deadline: Instant,
    control: watch::Receiver<Control>,
    progress: Arc<Progress>,
}

impl Writer {
    async fn run(mut self, config: &Config) -> WriterRun {
        let mut entries = Vec::new();
        let error = self.write(config, &mut entries).await.err();
        WriterRun { entries, error }
    }

    /// Connects and commits until told to stop; Err says why it ended early.
    async fn write(
        &mut self,
        config: &Config,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), String> {
        let (client, statements) = tokio::select! {
            connected = connect(config, self.mix.is_some()) => connected.map_err(|e| e.to_string())?,
            _ = stop_or_deadline(&mut self.control, self.deadline) => return Ok(()),
        };
        let writer_sql = i32::try_from(self.id).map_err(|e| e.to_string())?;
        let mut ticker = tokio::time::interval_at(self.first_tick, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut seq = self.first_seq - 1;
        // A writer continuing on a restored server finds the items of its
        // first seq - 1 operations there.
        let mut items = self
            .mix
            .map(|mix| ItemModel::after(self.seed, mix, self.id, seq));
        while next_turn(&mut self.control, &mut ticker, self.deadline).await {
            seq += 1;
            let row = payload(self.seed, self.id, seq, self.payload_bytes);
            let seq_sql = i64::try_from(seq).map_err(|e| e.to_string())?;
            let op = items.as_mut().map(ItemModel::next_op);
            let sent_at = now();
            self.progress.sent.fetch_add(1, Ordering::Relaxed);
            let answer = tokio::select! {
                r = statements.run(&client, [&writer_sql, &seq_sql, &row], op.as_ref()) => Some(r),
                _ = grace(&mut self.control, self.deadline) => None,
            };
            let acked_at = now();
            let outcome = match &answer {
                Some(Ok(_)) => Outcome::Acked,
                Some(Err(e)) => failure(e),
                None => Outcome::Unknown(format!(
                    "no answer within {}s of the stop",
                    STOP_GRACE.as_secs()
                )),
            };
            let error = match (&outcome, &answer) {
                (Outcome::Acked, Some(Ok(changed))) if op.is_some() && *changed != 1 => Some(format!(
                    "seq {seq}: its {ITEMS} operation changed {changed} rows, not 1: the primary does not hold the items this writer wrote"
                )),
                (Outcome::Acked, _) => None,
                (Outcome::Failed(e) | Outcome::Unknown(e), _) => Some(format!("seq {seq}: {e}")),
            };
            let acked = outcome == Outcome::Acked;
            entries.push(LedgerEntry {
                writer: self.id,
                seq,
                sent_at,
                acked_at: acked.then_some(acked_at),
                outcome,
            });
            if acked {
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The prepared statements of a writer, so each commit is one round trip.
struct Statements {
    ledger: Statement,
    /// Ledger row plus item insert, update and delete, each one statement
    /// (a data-modifying WITH), so both commit together.
    items: Option<[Statement; 3]>,
}

impl Statements {
    /// Commits the ledger row `(writer, seq, payload)` with `op`; returns
    /// the rows `op` changed.
    async fn run(
        &self,
        client: &Client,
        ledger: [&(dyn ToSql + Sync); 3],
        op: Option<&ItemOp>,
    ) -> Result<u64, tokio_postgres::Error> {
        let (Some([insert, update, delete]), Some(op)) = (&self.items, op) else {
            return client.execute(&self.ledger, &ledger).await;
        };
        match op {
            ItemOp::Insert { id, item } | ItemOp::Update { id, item } => {
                let id = *id as i64;
                let params: [&(dyn ToSql + Sync); 8] = [
                    ledger[0],
                    ledger[1],
                    ledger[2],
                    &id,
                    &item.rev,
                    &item.tag,
                    &item.labels,
                    &item.body,
                ];
                let statement = match op {
                    ItemOp::Insert { .. } => insert,
                    _ => update,
                };
                client.execute(statement, &params).await
            }
            ItemOp::Delete { id } => {
                let id = *id as i64;
                let params: [&(dyn ToSql + Sync); 4] = [ledger[0], ledger[1], ledger[2], &id];
                client.execute(delete, &params).await
            }
        }
    }
}

/// A connection with the writer's statements prepared.
async fn connect(config: &Config, mixed: bool) -> Result<(Client, Statements), WorkloadError> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg_err("connecting"))?;
    tokio::spawn(async move {
        // Errors surface on the client's next statement.
        let _ = connection.await;
    });
    let ledger_insert = format!("INSERT INTO {TABLE} (writer, seq, payload) VALUES ($1, $2, $3)");
    let prepare = |sql: String| {
        let client = &client;
        async move {
            client
                .prepare(&sql)
                .await
                .map_err(pg_err("preparing the workload statements"))
        }
    };
    let ledger = prepare(ledger_insert.clone()).await?;
    let items = if mixed {
        let with = format!("WITH ledger AS ({ledger_insert})");
        Some([
            prepare(format!(
                "{with} INSERT INTO {ITEMS} (writer, id, rev, tag, labels, body) \
                 VALUES ($1, $4, $5, $6, $7, $8)"
            ))
            .await?,
            prepare(format!(
                "{with} UPDATE {ITEMS} SET rev = $5, tag = $6, labels = $7, body = $8 \
                 WHERE writer = $1 AND id = $4"
            ))
            .await?,
            prepare(format!(
                "{with} DELETE FROM {ITEMS} WHERE writer = $1 AND id = $4"
            ))
            .await?,
        ])
    } else {
        None
    };
    Ok((client, Statements { ledger, items }))
}

/// A commit's failure: an ERROR rolled the transaction back; anything else
/// (FATAL, a lost connection) leaves the commit unknown.
fn failure(e: &tokio_postgres::Error) -> Outcome {
    let text = pg_error_text(e);
    match e.as_db_error().and_then(|db| db.parsed_severity()) {
        Some(Severity::Error) => Outcome::Failed(text),
        _ => Outcome::Unknown(text),
    }
}

/// Waits for the writer's next turn: false once it must stop.
async fn next_turn(
    control: &mut watch::Receiver<Control>,
    ticker: &mut Interval,
    deadline: Instant,
) -> bool {
    loop {
        let state = *control.borrow_and_update();
        match state {
            Control::Stop => return false,
            Control::Pause => {
                tokio::select! {
                    changed = control.changed() => if changed.is_err() { return false },
                    _ = sleep_until(deadline) => return false,
                }
                // No burst of missed turns after the pause.
                ticker.reset();
            }
            Control::Run => tokio::select! {
                biased;
                changed = control.changed() => if changed.is_err() { return false },
                _ = sleep_until(deadline) => return false,
                _ = ticker.tick() => return true,
            },
        }
    }
}

/// Resolves at the deadline or the stop, whichever comes first.
pub(super) async fn stop_or_deadline(control: &mut watch::Receiver<Control>, deadline: Instant) {
    tokio::select! {
        _ = sleep_until(deadline) => {}
        // A dropped handle counts as a stop.
        _ = control.wait_for(|c| *c == Control::Stop) => {}
    }
}

/// Resolves [`STOP_GRACE`] after the deadline or the stop.
async fn grace(control: &mut watch::Receiver<Control>, deadline: Instant) {
    stop_or_deadline(control, deadline).await;
    tokio::time::sleep(STOP_GRACE).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(writers: u32, rate: u32) -> WorkloadSpec {
        WorkloadSpec {
            writers,
            rate_per_second: rate,
            duration: Duration::from_millis(300),
            payload_bytes: 8,
            seed: 1,
            mix: None,
        }
    }

    /// A server that is not there: every writer records why and ends.
    #[tokio::test]
    async fn writers_survive_an_unreachable_server() {
        let mut config = Config::new();
        config
            .host_path("/nonexistent-pgdrill-socket-dir")
            .port(1)
            .user("postgres")
            .dbname("postgres");
        let handle = start(config, spec(2, 20)).unwrap();
        let ledger = handle.join().await;
        assert!(ledger.entries().is_empty());
        assert_eq!(ledger.writer_errors().len(), 2);
        assert!(
            ledger.writer_errors()[&1].starts_with("connecting: "),
            "{:?}",
            ledger.writer_errors()
        );
        assert!(ledger.expected_latest().exact);
    }

    #[tokio::test]
    async fn invalid_specs_are_refused() {
        assert!(matches!(
            start(Config::new(), spec(0, 1)),
            Err(WorkloadError::InvalidSpec(_))
        ));
        assert!(matches!(
            start(Config::new(), spec(1, 0)),
            Err(WorkloadError::InvalidSpec(_))
        ));
        assert!(matches!(
            start(Config::new(), spec(u32::MAX, 1)),
            Err(WorkloadError::InvalidSpec(_))
        ));
    }
}
