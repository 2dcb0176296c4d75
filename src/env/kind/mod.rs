//! The `kind` environment: the seed's topology on a Kubernetes cluster,
//! through the Kubernetes API (kube-rs; no `kubectl`). kind on a laptop or
//! in CI, any cluster at scale: the cluster is the one `KUBECONFIG` (or
//! the in-cluster configuration) names, its context `PGDRILL_KUBE_CONTEXT`.
//!
//! A drill gets a namespace (storage, the primary StatefulSet with the
//! backup tool beside PostgreSQL, the backup and monitor CronJobs) and a DR
//! namespace where restores happen, each a PITR Job into a fresh volume
//! claim, then a PostgreSQL pod that recovers there (the seed's DR test).
//! Base backups are Jobs made from the backup CronJob. The workload and the
//! verification reach servers through port-forwards. Both namespaces carry
//! the drill's labels and are deleted at the end unless kept; a new drill
//! deletes what drills whose pgdrill process died left behind.

pub mod manifests;

mod api;
mod forward;
#[cfg(test)]
mod mock;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;

use super::containers::{ImageChoice, StorageFlavor, IMAGES_SETTING, LABEL};
use super::image_layout::ENV_DIR;
use super::local::{drill_credentials, s3_settings, write_env_dir, WorkDir};
use super::{EnvError, EnvFacts, EnvSpec, RestoreTimings, Restored, ToolRun};
use api::Cluster;
use forward::PortForward;
use manifests::{Binary, Drill, PRIMARY_POD, PRIMARY_PVC, TOOLS_POD, TOOL_CONTAINER};

/// The data directory inside the volume (a fresh volume's root may hold
/// `lost+found`, which initdb refuses).
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";

/// Selects the kubeconfig context.
pub const CONTEXT_SETTING: &str = "PGDRILL_KUBE_CONTEXT";
/// Names an image with pgdrill baked in at `/usr/local/bin/pgdrill`
/// (for clusters that cannot mount the build directory;
/// `ci/images/bake-pgdrill` makes one).
pub const IMAGE_SETTING: &str = "PGDRILL_KUBE_IMAGE";
/// Where the pgdrill binary is on the nodes (kind: `kind-config.yaml`).
pub const HOST_BINARY_SETTING: &str = "PGDRILL_KUBE_BINARY";
/// The node path `kind-config.yaml` mounts the build directory at.
pub const DEFAULT_HOST_BINARY: &str = "/pgdrill/pgdrill";
/// The uid:gid of the image's `postgres` user, when not the default.
pub const RUN_AS_SETTING: &str = "PGDRILL_KUBE_RUN_AS";
/// Label that marks a namespace kept with `--keep` (sweeps leave it).
pub const KEPT_LABEL: &str = "org.pgdrill.kept";

/// How long pods may take to be scheduled and start (image loading,
/// volume provisioning included).
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a restore may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(1800);

/// Failures of the kind environment, with the cause spelled out.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No cluster could be reached or configured.
    #[error("no Kubernetes cluster: {0}")]
    NoCluster(String),
    /// An API call failed.
    #[error("kubernetes: {what}: {detail}")]
    Api { what: String, detail: String },
    /// A manifest of `fixtures/k8s/` is unusable.
    #[error(transparent)]
    Manifest(#[from] manifests::ManifestError),
    /// A pod or job did what it must not (failed, timed out).
    #[error("{0}")]
    Workload(String),
    /// This host's side (port-forward listeners, the work directory).
    #[error("{0}")]
    Local(String),
}

/// Why drills in the kind environment cannot run here, if they cannot: no
/// configuration, or no API server answering it.
pub async fn availability() -> Result<(), String> {
    let cluster = Cluster::connect(std::env::var(CONTEXT_SETTING).ok().as_deref())
        .await
        .map_err(|e| e.to_string())?;
    cluster
        .version()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One restore in progress or done.
struct Restore {
    namespace: String,
    pod: String,
    forward: Option<PortForward>,
}

/// The `kind` drill environment.
pub struct KubeEnvironment {
    cluster: Cluster,
    drill: Drill,
    backup_cronjob: CronJob,
    facts: EnvFacts,
    /// Where backup-tool verbs run, (namespace, pod, container), while a
    /// primary runs: see [`KubeEnvironment::tool_target`].
    tool_target: Option<(String, String, String)>,
    primary_forward: Option<PortForward>,
    /// The host's way to the storage (its settings name the port).
    storage_forward: Option<PortForward>,
    primary_config: tokio_postgres::Config,
    restores: BTreeMap<String, Restore>,
    postgres_settings: Vec<(String, String)>,
    backups_made: u32,
    keep: bool,
    torn_down: bool,
    work: WorkDir,
}

impl KubeEnvironment {
    /// Creates the drill's namespaces and objects, and waits for the
    /// storage and an archiving primary.
    pub async fn start(spec: &EnvSpec, pgdrill: &Path) -> Result<Self, EnvError> {
        let cluster = Cluster::connect(std::env::var(CONTEXT_SETTING).ok().as_deref()).await?;
        cluster.sweep_abandoned().await;
        let images = ImageChoice::choose(
            spec.images.postgres.as_deref(),
            spec.images.storage.as_deref(),
            spec.postgres_major,
            std::env::var(IMAGES_SETTING).ok().as_deref(),
        )?;
        let binary = match std::env::var(IMAGE_SETTING) {
            Ok(_) => Binary::InImage,
            Err(_) => Binary::HostPath(
                std::env::var(HOST_BINARY_SETTING)
                    .unwrap_or_else(|_| DEFAULT_HOST_BINARY.to_string()),
            ),
        };
        let _ = pgdrill; // the pods run the binary the node or image holds
        let work = WorkDir::new("pgdrill-kind-", None)?;
        let id = format!("pgdrill-{:08x}", rand::random::<u32>());
        let baked = std::env::var(IMAGE_SETTING).ok();
        let storage_flavor = images.storage_flavor();
        let drill = Drill {
            id,
            owner: super::containers::owner(),
            postgres_image: baked.clone().unwrap_or(images.postgres.clone()),
            // `pgdrill s3-serve` needs the binary: the baked image has it.
            storage_image: match (&baked, storage_flavor) {
                (Some(image), StorageFlavor::Pgdrill) => image.clone(),
                _ => images.storage.clone(),
            },
            storage_flavor,
            binary,
            retain: 7,
            run_as: run_as(&images)?,
        };
        let (access_key, secret_key) = drill_credentials();
        let prefix = format!("s3://{}/drill", spec.bucket);
        let mut settings = s3_settings(&prefix, "http://storage:9000", &access_key, &secret_key);
        settings.extend(spec.tool_settings.iter().cloned());
        settings.extend(
            spec.tool_secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        // Each pod sets PGHOST (see fixtures/k8s/walg-config.yaml).
        settings.push(("PGUSER".to_string(), "postgres".to_string()));
        let objects = manifests::primary(&drill, &settings, &spec.postgres_settings)
            .map_err(KubeError::from)?;
        let ns = drill.namespace().to_string();
        cluster.create_namespace(&objects.namespace).await?;
        cluster.create_namespace(&objects.dr_namespace).await?;
        cluster.create(&ns, &objects.secret).await?;
        cluster
            .create(&drill.dr_namespace(), &objects.dr_secret)
            .await?;
        cluster.create(&ns, &objects.config).await?;
        cluster.create(&ns, &objects.storage_claim).await?;
        cluster.create(&ns, &objects.storage).await?;
        cluster.create(&ns, &objects.storage_service).await?;
        let storage_pod = cluster
            .ready_pod_of(&ns, "app=storage", START_TIMEOUT)
            .await?;
        let storage_forward = PortForward::start(cluster.pods(&ns), &storage_pod, 9000).await?;
        let host_env_dir = work.path().join("host-env");
        write_env_dir(
            &host_env_dir,
            &s3_settings(
                &prefix,
                &format!("http://127.0.0.1:{}", storage_forward.port()),
                &access_key,
                &secret_key,
            ),
            None,
        )?;
        cluster.create(&ns, &objects.postgres).await?;
        cluster.create(&ns, &objects.postgres_service).await?;
        let backup_cronjob = cluster.create(&ns, &objects.backup_cronjob).await?;
        cluster.create(&ns, &objects.monitor_cronjob).await?;
        cluster.create(&ns, &objects.tools).await?;
        cluster
            .wait_pod_ready(&ns, PRIMARY_POD, START_TIMEOUT)
            .await?;
        let primary_forward = PortForward::start(cluster.pods(&ns), PRIMARY_POD, 5432).await?;
        let primary_config = super::pg::loopback_config(primary_forward.port());
        let client = super::pg::connect_retrying(&primary_config, Duration::from_secs(60)).await?;
        let version =
            super::pg::server_version_of_major(&client, spec.postgres_major, &drill.postgres_image)
                .await?;
        Ok(KubeEnvironment {
            facts: EnvFacts {
                kind: crate::scenario::Environment::Kind,
                postgres_version: version,
                wal_segment_size: u64::from(spec.wal_segsize_mb.unwrap_or(16)) << 20,
                storage_settings: host_env_dir,
                images: Vec::new(),
            },
            cluster,
            drill,
            backup_cronjob,
            tool_target: Some((ns, PRIMARY_POD.into(), TOOL_CONTAINER.into())),
            primary_forward: Some(primary_forward),
            storage_forward: Some(storage_forward),
            primary_config,
            restores: BTreeMap::new(),
            postgres_settings: spec.postgres_settings.clone(),
            backups_made: 0,
            keep: false,
            torn_down: false,
            work,
        })
    }

    async fn backup_names(&self) -> Result<Vec<String>, EnvError> {
        use super::Environment;
        let json = self.backup_tool(&["backup-list", "--json"]).await?;
        let rows: Vec<crate::backup::catalog::BackupListRow> = serde_json::from_str(&json)
            .map_err(|e| EnvError::Other(format!("backup-list --json: {e}")))?;
        Ok(rows.into_iter().map(|r| r.backup_name).collect())
    }

    /// Restores `backup` as `label`: the PITR Job into a fresh claim, then
    /// a server on it; with `archive` in the primary's namespace, archiving
    /// (a failover), else in the DR namespace.
    async fn restore_server(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&crate::env::zone::TargetTime>,
        archive: bool,
    ) -> Result<Restored, EnvError> {
        let (claim, job) = manifests::pitr(&self.drill, label, backup, target, archive)
            .map_err(KubeError::from)?;
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let created = Instant::now();
        self.cluster.create(&ns, &claim).await?;
        self.cluster.create(&ns, &job).await?;
        let fetched = self
            .cluster
            .wait_job(&ns, &job_name, RESTORE_TIMEOUT)
            .await?;
        if let Some(code) = fetched.exit_code.filter(|&c| c != 0) {
            return Err(super::fetch_failed(Some(code), &fetched.log_tail));
        }
        let scheduling = fetched.started.saturating_duration_since(created);
        let fetch = fetched.finished.saturating_duration_since(fetched.started);

        let mut settings = if archive {
            crate::env::local::archiving_settings(
                Path::new(super::image_layout::PGDRILL),
                Path::new(ENV_DIR),
                &[],
            )
        } else {
            vec![("track_commit_timestamp".to_string(), "on".to_string())]
        };
        settings.extend(self.postgres_settings.iter().cloned());
        let pod =
            manifests::restore_pod(&self.drill, label, &ns, &settings).map_err(KubeError::from)?;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let started = Instant::now();
        self.cluster.create(&ns, &pod).await?;
        self.restores.insert(
            label.to_string(),
            Restore {
                namespace: ns.clone(),
                pod: pod_name.clone(),
                forward: None,
            },
        );
        if let Err(e) = self
            .cluster
            .wait_pod_ready(&ns, &pod_name, RESTORE_TIMEOUT)
            .await
        {
            let log = self.cluster.log_tail(&ns, &pod_name, "postgres", 50).await;
            return Err(super::recovery_failed(&log, e));
        }
        let start_to_consistent = started.elapsed();
        let forward = PortForward::start(self.cluster.pods(&ns), &pod_name, 5432).await?;
        let config = super::pg::loopback_config(forward.port());
        if let Some(r) = self.restores.get_mut(label) {
            r.forward = Some(forward);
        }
        let client = super::pg::connect_retrying(&config, Duration::from_secs(60)).await?;
        let cluster = &self.cluster;
        let log_tail = || async { cluster.log_tail(&ns, &pod_name, "postgres", 20).await };
        let consistent_to_promoted =
            super::pg::wait_promoted(&client, label, RESTORE_TIMEOUT, log_tail).await?;
        let log = self
            .cluster
            .log_tail(&ns, &pod_name, "postgres", 100_000)
            .await;
        Ok(Restored {
            client,
            timings: RestoreTimings {
                scheduling,
                fetch,
                start_to_consistent,
                consistent_to_promoted,
                wal_segments: super::restored_wal_files(&log),
            },
            stop: super::RecoveryStop::from_server_log(&log),
        })
    }

    /// Where backup-tool verbs run: beside the primary (backup-push reads
    /// its data directory), or in the tools pod once it is gone, as the
    /// seed's CronJobs run them.
    fn tool_target(&self) -> (String, String, String) {
        self.tool_target.clone().unwrap_or_else(|| {
            (
                self.drill.namespace().to_string(),
                TOOLS_POD.to_string(),
                TOOL_CONTAINER.to_string(),
            )
        })
    }

    /// Runs a program in restore `label`'s server container as `postgres`.
    async fn exec_in_restore(&self, label: &str, cmd: &[&str]) -> Result<ToolRun, EnvError> {
        let r = self
            .restores
            .get(label)
            .ok_or_else(|| EnvError::Other(format!("no restore {label}")))?;
        let mut full = vec!["runuser", "-u", "postgres", "--"];
        full.extend_from_slice(cmd);
        Ok(self
            .cluster
            .exec(&r.namespace, &r.pod, "postgres", &full)
            .await?)
    }
}

/// The `postgres` user of the PostgreSQL image: `PGDRILL_KUBE_RUN_AS`
/// (`uid:gid`), else the local image's (100:102, Debian's) or the official
/// image's (999:999).
fn run_as(images: &ImageChoice) -> Result<(i64, i64), KubeError> {
    if let Ok(text) = std::env::var(RUN_AS_SETTING) {
        return text
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .ok_or_else(|| {
                KubeError::Local(format!(
                    "{RUN_AS_SETTING}={text} is not uid:gid (e.g. 999:999)"
                ))
            });
    }
    Ok(if images.postgres.starts_with("pgdrill/") {
        (100, 102)
    } else {
        (999, 999)
    })
}

#[async_trait::async_trait]
impl super::Environment for KubeEnvironment {
    fn facts(&self) -> &EnvFacts {
        &self.facts
    }

    fn primary_config(&self) -> tokio_postgres::Config {
        self.primary_config.clone()
    }

    async fn backup_tool_status(&self, args: &[&str]) -> Result<ToolRun, EnvError> {
        let (ns, pod, container) = self.tool_target();
        let mut cmd = vec!["pgdrill", "--env-dir", ENV_DIR];
        cmd.extend_from_slice(args);
        let pgdata = format!("PGDATA={PGDATA}");
        let mut full = vec!["env", pgdata.as_str()];
        full.extend(cmd);
        Ok(self.cluster.exec(&ns, &pod, &container, &full).await?)
    }

    /// A base backup as the seed makes one by hand: a Job from the backup
    /// CronJob (`kubectl create job --from=cronjob/postgres-backup`).
    /// Returns the new backup's name, read with `backup-list --json`; a
    /// full one runs `backup-push --full`.
    async fn base_backup(&mut self, full: bool) -> Result<String, EnvError> {
        let before = self.backup_names().await?;
        self.backups_made += 1;
        let name = format!("backup-{}", self.backups_made);
        let mut job =
            manifests::job_from_cronjob(&self.backup_cronjob, &name).map_err(KubeError::from)?;
        if full {
            manifests::push_full(&mut job);
        }
        let ns = self.drill.namespace().to_string();
        self.cluster.create(&ns, &job).await?;
        let run = self.cluster.wait_job(&ns, &name, RESTORE_TIMEOUT).await?;
        if run.exit_code != Some(0) {
            return Err(EnvError::BackupTool {
                command: format!("backup job {name} (from CronJob postgres-backup)"),
                detail: format!(
                    "exit code {}: {}",
                    run.exit_code.map_or("-".into(), |c| c.to_string()),
                    run.log_tail
                ),
            });
        }
        let after = self.backup_names().await?;
        after
            .into_iter()
            .rev()
            .find(|n| !before.contains(n))
            .ok_or_else(|| EnvError::Other(format!("backup job {name} listed no new backup")))
    }

    fn storage_faults(&mut self) -> Option<&mut dyn super::StorageFaults> {
        Some(self)
    }

    async fn kill_primary(&mut self) -> Result<(), EnvError> {
        let ns = self.drill.namespace().to_string();
        // The crash: the pod deleted at once; then the StatefulSet scaled
        // to 0 so that it does not come back, and its volume discarded.
        self.cluster.delete_pod_now(&ns, PRIMARY_POD).await?;
        self.cluster
            .scale::<StatefulSet>(&ns, "postgres", 0)
            .await?;
        self.cluster.delete_claim(&ns, PRIMARY_PVC).await?;
        self.primary_forward = None;
        self.tool_target = None;
        Ok(())
    }

    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&crate::env::zone::TargetTime>,
        _phases: &mut dyn super::RestorePhases,
    ) -> Result<Restored, EnvError> {
        // Restores run as Jobs whose phases this side does not see; the
        // validator refuses restore faults here.
        self.restore_server(label, backup, target, false).await
    }

    async fn fail_over(
        &mut self,
        label: &str,
        backup: &str,
        target: &crate::env::zone::TargetTime,
    ) -> Result<Restored, EnvError> {
        let ns = self.drill.namespace().to_string();
        self.cluster
            .scale::<StatefulSet>(&ns, "postgres", 0)
            .await?;
        self.cluster
            .wait_pod_gone(&ns, PRIMARY_POD, START_TIMEOUT)
            .await?;
        self.primary_forward = None;
        let restored = self
            .restore_server(label, backup, Some(target), true)
            .await?;
        let r = self
            .restores
            .remove(label)
            .expect("restore_server keeps the restore");
        if let Some(forward) = &r.forward {
            self.primary_config = super::pg::loopback_config(forward.port());
        }
        self.tool_target = Some((r.namespace.clone(), r.pod.clone(), "postgres".into()));
        self.primary_forward = r.forward;
        Ok(restored)
    }

    async fn amcheck(&self, label: &str) -> Result<crate::verify::Check, EnvError> {
        let mut cmd = vec!["pg_amcheck"];
        cmd.extend_from_slice(crate::verify::AMCHECK_ARGS);
        Ok(self
            .exec_in_restore(label, &cmd)
            .await?
            .judged(crate::verify::amcheck_check))
    }

    async fn checksums(&mut self, label: &str) -> Result<crate::verify::Check, EnvError> {
        let run = self
            .exec_in_restore(label, &["pg_ctl", "stop", "-m", "fast", "-D", PGDATA])
            .await;
        // pg_ctl stop ends the pod's main process: the pod is done.
        let r = self
            .restores
            .get(label)
            .ok_or_else(|| EnvError::Other(format!("no restore {label}")))?;
        let (ns, pod) = (r.namespace.clone(), r.pod.clone());
        if let Ok(run) = &run {
            if !run.status.success() {
                return Err(EnvError::Other(format!(
                    "stopping restore {label}: {}",
                    super::tail(run.stderr.trim(), 3)
                )));
            }
        }
        self.cluster.delete_pod(&ns, &pod).await?;
        self.cluster.wait_pod_gone(&ns, &pod, START_TIMEOUT).await?;
        let run = self
            .cluster
            .run_pod(
                &ns,
                &format!("checksums-{label}"),
                &self.drill.postgres_image,
                self.drill.run_as,
                &manifests::restore_claim(label),
                &["pg_checksums", "--check", "-D", PGDATA],
            )
            .await?;
        Ok(run.judged(crate::verify::checksums_check))
    }

    async fn discard_restore(&mut self, label: &str) {
        if let Some(r) = self.restores.remove(label) {
            let _ = self.cluster.delete_pod_now(&r.namespace, &r.pod).await;
            let _ = self
                .cluster
                .delete_claim(&r.namespace, &manifests::restore_claim(label))
                .await;
        }
    }

    async fn teardown(mut self: Box<Self>, keep: bool) -> Option<PathBuf> {
        self.torn_down = true;
        self.keep = keep;
        let namespaces = [
            self.drill.namespace().to_string(),
            self.drill.dr_namespace(),
        ];
        if keep {
            for ns in &namespaces {
                let _ = self.cluster.label_namespace(ns, KEPT_LABEL, "true").await;
            }
            eprintln!(
                "pgdrill: kept namespaces {} and {}: delete them with `kubectl delete namespace -l {LABEL}={}`",
                namespaces[0], namespaces[1], self.drill.id
            );
            return Some(self.work.keep());
        }
        for ns in &namespaces {
            let _ = self.cluster.delete_namespace(ns).await;
        }
        None
    }
}

#[async_trait::async_trait]
impl super::StorageFaults for KubeEnvironment {
    /// `disconnect`: the storage Deployment scaled to zero (no endpoint:
    /// connections refused; its volume keeps the data); `pause`: a
    /// NetworkPolicy drops all traffic to it (connections hang).
    async fn storage_outage(
        &mut self,
        mode: crate::scenario::OutageMode,
        duration: Duration,
    ) -> Result<String, EnvError> {
        use crate::scenario::OutageMode;
        let ns = self.drill.namespace().to_string();
        match mode {
            OutageMode::Disconnect => {
                self.cluster.scale::<Deployment>(&ns, "storage", 0).await?;
                tokio::time::sleep(duration).await;
                self.cluster.scale::<Deployment>(&ns, "storage", 1).await?;
                let pod = self
                    .cluster
                    .ready_pod_of(&ns, "app=storage", START_TIMEOUT)
                    .await?;
                if let Some(forward) = &self.storage_forward {
                    forward.retarget(&pod);
                }
                Ok(format!(
                    "storage scaled to 0 for {duration:?}, back as pod {pod}"
                ))
            }
            OutageMode::Pause => {
                let cut = manifests::storage_cut(&self.drill).map_err(KubeError::from)?;
                let name = cut.metadata.name.clone().unwrap_or_default();
                self.cluster.create(&ns, &cut).await?;
                tokio::time::sleep(duration).await;
                self.cluster.delete_network_policy(&ns, &name).await?;
                Ok(format!(
                    "storage cut off by NetworkPolicy {name} for {duration:?}"
                ))
            }
            OutageMode::Errors => Err(EnvError::Other(
                "outage mode `errors` is not available in the kind environment".into(),
            )),
        }
    }

    async fn limit_storage_link(
        &mut self,
        _limit: &super::fault::LinkLimit,
    ) -> Result<String, EnvError> {
        Err(EnvError::Other(
            "network_latency is not available in the kind environment (no tc in the cluster's network); use environment: containers".into(),
        ))
    }
}

impl Drop for KubeEnvironment {
    fn drop(&mut self) {
        if self.torn_down || self.keep {
            return;
        }
        // Not torn down (an error or Ctrl-C unwound past the drill): delete
        // the namespaces anyway, waiting for the API server's answers;
        // sweeps catch what this misses.
        let cluster = self.cluster.clone();
        let namespaces = [
            self.drill.namespace().to_string(),
            self.drill.dr_namespace(),
        ];
        super::block_on_in_drop(async move {
            for ns in &namespaces {
                let _ = cluster.delete_namespace(ns).await;
            }
        });
    }
}

/// The owner label's value for this process (label values allow no ':').
pub fn owner_label() -> String {
    super::containers::owner().replace(':', ".")
}

/// Whether a drill's owner label names a process of this host that is
/// gone.
fn owner_label_is_gone(label: &str) -> bool {
    match label.rsplit_once('.') {
        Some((host, pid)) => super::containers::owner_is_gone(&format!("{host}:{pid}")),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::mock::{answer, mocked, Handle};
    use crate::env::Environment;
    use serde_json::json;

    /// A drill's environment on a mocked API server, as `start` leaves it.
    fn started() -> (Box<KubeEnvironment>, Handle) {
        let (cluster, handle) = mocked();
        let drill = Drill {
            id: "pgdrill-0000abcd".into(),
            owner: crate::env::containers::owner(),
            postgres_image: "postgres:15".into(),
            storage_image: "minio/minio".into(),
            storage_flavor: crate::env::containers::StorageFlavor::Minio,
            binary: Binary::HostPath(DEFAULT_HOST_BINARY.into()),
            retain: 7,
            run_as: (999, 999),
        };
        let objects = manifests::primary(&drill, &[], &[]).unwrap();
        let env = KubeEnvironment {
            cluster,
            backup_cronjob: objects.backup_cronjob,
            facts: EnvFacts {
                kind: crate::scenario::Environment::Kind,
                postgres_version: "15.10".into(),
                wal_segment_size: 16 << 20,
                storage_settings: PathBuf::from("/nonexistent"),
                images: Vec::new(),
            },
            tool_target: Some((drill.id.clone(), PRIMARY_POD.into(), TOOL_CONTAINER.into())),
            drill,
            primary_forward: None,
            storage_forward: None,
            primary_config: crate::env::pg::loopback_config(1),
            restores: BTreeMap::new(),
            postgres_settings: Vec::new(),
            backups_made: 0,
            keep: false,
            torn_down: false,
            work: WorkDir::new("pgdrill-kind-test-", None).unwrap(),
        };
        (Box::new(env), handle)
    }

    fn object(kind: &str, name: &str) -> serde_json::Value {
        let api = if kind == "StatefulSet" {
            "apps/v1"
        } else {
            "v1"
        };
        json!({ "apiVersion": api, "kind": kind, "metadata": { "name": name } })
    }

    #[tokio::test]
    async fn teardown_deletes_both_namespaces_and_keep_labels_them_instead() {
        let (env, mut handle) = started();
        let teardown = tokio::spawn(env.teardown(false));
        for ns in ["pgdrill-0000abcd", "pgdrill-0000abcd-dr"] {
            let asked = answer(&mut handle, 200, object("Namespace", ns)).await;
            assert_eq!(
                (asked.method.as_str(), asked.path()),
                ("DELETE", &*format!("/api/v1/namespaces/{ns}"))
            );
        }
        assert_eq!(teardown.await.unwrap(), None);

        let (env, mut handle) = started();
        let teardown = tokio::spawn(env.teardown(true));
        for ns in ["pgdrill-0000abcd", "pgdrill-0000abcd-dr"] {
            let asked = answer(&mut handle, 200, object("Namespace", ns)).await;
            assert_eq!(
                (asked.method.as_str(), asked.path()),
                ("PATCH", &*format!("/api/v1/namespaces/{ns}"))
            );
            assert_eq!(
                asked.body,
                json!({ "metadata": { "labels": { KEPT_LABEL: "true" } } })
            );
        }
        let kept = teardown.await.unwrap().expect("kept: a work directory");
        assert!(kept.exists());
        std::fs::remove_dir_all(kept).unwrap();
    }

    #[tokio::test]
    async fn killing_the_primary_crashes_its_pod_keeps_it_down_and_discards_its_volume() {
        let (mut env, mut handle) = started();
        assert_eq!(env.tool_target().1, PRIMARY_POD);
        let kill = tokio::spawn(async move {
            env.kill_primary().await.unwrap();
            env
        });
        let asked = answer(&mut handle, 200, object("Pod", PRIMARY_POD)).await;
        assert_eq!(
            (asked.method.as_str(), asked.path()),
            (
                "DELETE",
                "/api/v1/namespaces/pgdrill-0000abcd/pods/postgres-0"
            )
        );
        assert_eq!(asked.body["gracePeriodSeconds"], 0);
        let asked = answer(&mut handle, 200, object("StatefulSet", "postgres")).await;
        assert_eq!(asked.body, json!({ "spec": { "replicas": 0 } }));
        let asked = answer(
            &mut handle,
            200,
            object("PersistentVolumeClaim", PRIMARY_PVC),
        )
        .await;
        assert_eq!((asked.method.as_str(), asked.path()), ("DELETE", "/api/v1/namespaces/pgdrill-0000abcd/persistentvolumeclaims/postgres-data-postgres-0"));
        let mut env = kill.await.unwrap();
        // The tool runs in the tools pod from now on.
        assert_eq!(env.tool_target().1, TOOLS_POD);
        env.torn_down = true;
    }

    #[tokio::test]
    async fn a_storage_outage_scales_the_storage_away_or_cuts_it_off() {
        use crate::scenario::OutageMode;
        let (mut env, mut handle) = started();
        let outage = tokio::spawn(async move {
            let faults = env.storage_faults().expect("kind cuts storage off");
            let said = faults
                .storage_outage(OutageMode::Disconnect, Duration::ZERO)
                .await
                .unwrap();
            assert!(said.contains("back as pod storage-2"), "{said}");
            let said = faults
                .storage_outage(OutageMode::Pause, Duration::ZERO)
                .await
                .unwrap();
            assert!(said.contains("NetworkPolicy storage-cut"), "{said}");
            assert!(faults
                .limit_storage_link(&crate::env::fault::LinkLimit {
                    delay: None,
                    rate_kbit: Some(1000),
                })
                .await
                .is_err());
            env.torn_down = true;
        });
        let deployment = |replicas: i32| json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "storage" }, "spec": { "replicas": replicas } });
        for replicas in [0, 1] {
            let asked = answer(&mut handle, 200, deployment(replicas)).await;
            assert_eq!(
                (asked.method.as_str(), asked.path()),
                (
                    "PATCH",
                    "/apis/apps/v1/namespaces/pgdrill-0000abcd/deployments/storage"
                )
            );
            assert_eq!(asked.body, json!({ "spec": { "replicas": replicas } }));
        }
        let ready = json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [{ "metadata": { "name": "storage-2" }, "status": { "conditions": [{ "type": "Ready", "status": "True" }] } }]
        });
        let asked = answer(&mut handle, 200, ready).await;
        assert!(
            asked.uri.contains("labelSelector=app%3Dstorage"),
            "{}",
            asked.uri
        );
        let policy = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": { "name": "storage-cut" } });
        let asked = answer(&mut handle, 201, policy.clone()).await;
        assert_eq!(
            (asked.method.as_str(), asked.path()),
            (
                "POST",
                "/apis/networking.k8s.io/v1/namespaces/pgdrill-0000abcd/networkpolicies"
            )
        );
        assert_eq!(
            asked.body["spec"]["podSelector"]["matchLabels"]["app"],
            "storage"
        );
        assert_eq!(asked.body["spec"]["ingress"], json!([]));
        let asked = answer(&mut handle, 200, policy).await;
        assert_eq!((asked.method.as_str(), asked.path()), ("DELETE", "/apis/networking.k8s.io/v1/namespaces/pgdrill-0000abcd/networkpolicies/storage-cut"));
        outage.await.unwrap();
    }

    #[test]
    fn owner_labels_round_trip_to_processes() {
        use crate::env::containers::OWNER_LABEL;
        let label = owner_label();
        assert!(!label.contains(':'), "{label}");
        assert!(!owner_label_is_gone(&label), "this process is alive");
        let host = label.rsplit_once('.').unwrap().0;
        assert!(owner_label_is_gone(&format!("{host}.999999999")));
        assert_eq!(OWNER_LABEL, "org.pgdrill.owner");
    }
}
