//! The `containers` environment: PostgreSQL (with pgdrill inside, as the
//! seed's WAL-G sidecar runs) and S3-compatible storage in their own
//! containers on a Docker network made for the drill, through the
//! `testcontainers` crate.
//!
//! Layout, matching the Kubernetes manifests: the backup tool's settings are
//! an env directory mounted read-only at `/etc/wal-g/env` (keys at
//! `/etc/wal-g/keys`), every data directory is a Docker volume at
//! `/var/lib/postgresql/data`, archive_command and restore_command are
//! `pgdrill --env-dir /etc/wal-g/env wal-push|wal-fetch`. The pgdrill binary
//! under test is mounted read-only at `/usr/local/bin/pgdrill`, so images
//! carry only the OS and PostgreSQL and are built once (`ci/images/build`).
//!
//! A restore is two containers on a fresh, empty volume, like the seed's
//! PITR Job: one runs `backup-fetch` and exits (the init container), then a
//! server starts on the volume and recovers. Nothing but the bucket is
//! shared with the primary.

mod docker;
mod images;
pub use images::images_available;
mod sweep;

pub use docker::engine_answers;
pub use images::{inspect_images, ImageChoice, StorageFlavor, IMAGES_SETTING};
pub use sweep::{
    drills_with_containers, leftovers, remove_drill, sweep_abandoned, LABEL, OWNER_LABEL,
};

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testcontainers::bollard;
use testcontainers::core::wait::ExitWaitStrategy;
use testcontainers::core::{AccessMode, ContainerPort, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::block_on_in_drop;
use super::image_layout::{initdb_args, postgres_command};
use super::local::{archiving_settings, drill_credentials, s3_settings, write_env_dir, WorkDir};
use super::{tail, EnvError, EnvSpec, RestoreTimings, Restored, ToolRun};
use crate::backup::config::Secret;
use docker::{docker, remove_volume, LogFile};
use images::split_reference;
use sweep::{kept_marker, volume_name};
pub(crate) use sweep::{owner, owner_is_gone};

pub use super::image_layout::{ENV_DIR, KEYS_DIR, PGDRILL};
/// The data directory: the volume itself, as in the official image.
pub const PGDATA: &str = super::image_layout::DATA_MOUNT;
/// The storage's S3 port inside the network.
const S3_PORT: u16 = 9000;
/// The storage server's fault file (`s3-serve --fault-file`): `errors`
/// in it makes every request fail 503 (outage mode `errors`).
const STORAGE_FAULT_FILE: &str = "/tmp/pgdrill-s3.fault";
/// PostgreSQL's line once it accepts connections (after any recovery).
const READY: &str = "database system is ready to accept connections";

/// Failures of the containers environment.
#[derive(Debug, thiserror::Error)]
pub enum ContainersError {
    /// A Docker call failed.
    #[error("docker: {what}: {detail}")]
    Docker { what: String, detail: String },
    /// A container did what it must not (exited, failed a command).
    #[error("{0}")]
    Container(String),
    /// The host side (work directory, env directory, tc).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Which images to use could not be decided.
    #[error("{0}")]
    Images(String),
}

fn docker_err<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> ContainersError {
    let what = what.into();
    move |e| {
        let mut detail = e.to_string();
        if detail.contains("failed to pull") {
            detail.push_str(&format!(
                "\nhint: without a registry, set {IMAGES_SETTING}=local to use the images of ci/images/build, or name local images in the scenario's `images`"
            ));
        }
        ContainersError::Docker { what, detail }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainersError {
    let context = context.into();
    move |source| ContainersError::Io { context, source }
}

/// The `containers` drill environment.
pub struct ContainersEnvironment {
    // Containers go before volumes and the work directory (see Drop).
    primary: Option<ContainerAsync<GenericImage>>,
    restores: BTreeMap<String, ContainerAsync<GenericImage>>,
    tools: Option<ContainerAsync<GenericImage>>,
    storage: Option<ContainerAsync<GenericImage>>,
    /// The drill's id: container, network and volume name prefix, label.
    drill: String,
    volumes: Vec<String>,
    images: ImageChoice,
    facts: super::EnvFacts,
    pgdrill: PathBuf,
    /// Mounted at /etc/wal-g: `env/` (tool settings) and `keys/`.
    wal_g_dir: PathBuf,
    log_dir: Option<PathBuf>,
    postgres_settings: Vec<(String, String)>,
    primary_config: tokio_postgres::Config,
    keep: bool,
    work: WorkDir,
}

/// Container paths for encryption keys named by `*_PATH` settings: the
/// files are copied under `keys` and the settings rewritten.
fn relocate_keys(settings: &mut [(String, String)], keys: &Path) -> Result<(), ContainersError> {
    for (name, value) in settings.iter_mut() {
        if !name.ends_with("_PATH") {
            continue;
        }
        let source = PathBuf::from(&*value);
        std::fs::copy(&source, keys.join(&*name))
            .map_err(io_err(format!("copying {} for {name}", source.display())))?;
        *value = format!("{KEYS_DIR}/{name}");
    }
    Ok(())
}

impl ContainersEnvironment {
    /// Starts the network, the storage, a tools container and an archiving
    /// primary; container logs go to `spec.log_dir/containers/`.
    pub async fn start(spec: &EnvSpec, pgdrill: &Path) -> Result<Self, EnvError> {
        let images = ImageChoice::choose(
            spec.images.postgres.as_deref(),
            spec.images.storage.as_deref(),
            spec.postgres_major,
            std::env::var(IMAGES_SETTING).ok().as_deref(),
        )?;
        let image_records = inspect_images(&images).await?;
        sweep_abandoned().await;
        let work = WorkDir::new("pgdrill-containers-", None)?;
        let drill = format!(
            "pgdrill-{}",
            work.path()
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.trim_start_matches("pgdrill-containers-").to_lowercase())
                .unwrap_or_default()
        );
        let wal_g_dir = work.path().join("wal-g");
        let keys = wal_g_dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(io_err("creating the keys directory"))?;
        let (access_key, secret_key) = drill_credentials();
        let prefix = format!("s3://{}/drill", spec.bucket);
        let s3 = |endpoint: String| s3_settings(&prefix, &endpoint, &access_key, &secret_key);
        let mut env = ContainersEnvironment {
            primary: None,
            restores: BTreeMap::new(),
            tools: None,
            storage: None,
            volumes: Vec::new(),
            images,
            facts: super::EnvFacts {
                kind: crate::scenario::Environment::Containers,
                postgres_version: String::new(),
                wal_segment_size: u64::from(spec.wal_segsize_mb.unwrap_or(16)) << 20,
                // Tool settings for reaching the storage from this host.
                storage_settings: work.path().join("host-env"),
                images: image_records,
            },
            pgdrill: pgdrill.to_path_buf(),
            wal_g_dir,
            log_dir: spec.log_dir.clone(),
            postgres_settings: spec.postgres_settings.clone(),
            primary_config: tokio_postgres::Config::new(),
            keep: false,
            work,
            drill,
        };
        // Storage first: everything else needs it.
        let storage_name = format!("{}-storage", env.drill);
        let storage = env
            .start_storage(&storage_name, &spec.bucket, &access_key, &secret_key)
            .await?;
        let host_port = storage
            .get_host_port_ipv4(S3_PORT)
            .await
            .map_err(docker_err("reading the storage's port"))?;
        env.storage = Some(storage);
        write_env_dir(
            &env.facts.storage_settings,
            &s3(format!("http://127.0.0.1:{host_port}")),
            None,
        )?;
        env.wait_storage().await?;

        let mut tool_settings = s3(format!("http://{storage_name}:{S3_PORT}"));
        tool_settings.extend(spec.tool_settings.iter().cloned());
        tool_settings.extend(
            spec.tool_secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        relocate_keys(&mut tool_settings, &keys)?;
        write_env_dir(&env.wal_g_dir.join("env"), &tool_settings, None)?;
        make_readable(&env.wal_g_dir)?;

        let tools = env
            .request("tools", None)
            .with_cmd(["sleep", "infinity"])
            .start()
            .await
            .map_err(docker_err("starting the tools container"))?;
        env.tools = Some(tools);

        let mut settings = archiving_settings(Path::new(PGDRILL), Path::new(ENV_DIR), &[]);
        settings.extend(spec.postgres_settings.iter().cloned());
        let volume = env.volume("primary");
        let primary = env
            .request("primary", Some(&volume))
            .with_ready_conditions(vec![WaitFor::message_on_stderr(READY)])
            .with_startup_timeout(Duration::from_secs(180))
            .with_cmd(postgres_command(&settings));
        let mut primary =
            primary.with_env_var("POSTGRES_INITDB_ARGS", initdb_args(spec.wal_segsize_mb));
        if let Some(segment) = &spec.start_segment {
            primary = primary.with_env_var(START_SEGMENT_VAR, segment);
        }
        let primary = primary
            .start()
            .await
            .map_err(docker_err("starting the primary"))?;
        env.primary_config = server_config(&primary).await?;
        env.primary = Some(primary);
        let client =
            super::pg::connect_retrying(&env.primary_config, Duration::from_secs(60)).await?;
        if let Some(segment) = &spec.start_segment {
            started_in(&client, segment, &env.images.postgres).await?;
        }
        env.facts.postgres_version =
            super::pg::server_version_of_major(&client, spec.postgres_major, &env.images.postgres)
                .await?;
        Ok(env)
    }

    fn volume(&mut self, what: &str) -> String {
        let name = volume_name(&self.drill, what);
        self.volumes.push(name.clone());
        name
    }

    /// A container of the drill from the PostgreSQL image: on the drill's
    /// network, labelled, pgdrill and /etc/wal-g mounted, logs to a file,
    /// `data` (a volume) at PGDATA when given.
    fn request(&self, role: &str, data: Option<&str>) -> ContainerRequest<GenericImage> {
        let (name, tag) = split_reference(&self.images.postgres);
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(5432.tcp())
            .with_container_name(format!("{}-{role}", self.drill))
            .with_network(self.drill.clone())
            .with_label(LABEL, self.drill.clone())
            .with_label(OWNER_LABEL, owner())
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_mount(
                Mount::bind_mount(self.pgdrill.display().to_string(), PGDRILL)
                    .with_access_mode(AccessMode::ReadOnly),
            )
            .with_mount(
                Mount::bind_mount(self.wal_g_dir.display().to_string(), "/etc/wal-g")
                    .with_access_mode(AccessMode::ReadOnly),
            );
        if let Some(volume) = data {
            request = request.with_mount(Mount::volume_mount(volume, PGDATA));
        }
        match self.log_consumer(role) {
            Some(consumer) => request.with_log_consumer(consumer),
            None => request,
        }
    }

    fn log_consumer(&self, role: &str) -> Option<LogFile> {
        let dir = self.log_dir.as_ref()?.join("containers");
        std::fs::create_dir_all(&dir).ok()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{role}.log")))
            .ok()?;
        Some(LogFile(std::sync::Mutex::new(file)))
    }

    async fn start_storage(
        &mut self,
        name: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &Secret,
    ) -> Result<ContainerAsync<GenericImage>, EnvError> {
        let volume = self.volume("s3");
        let reference = self.images.storage.clone();
        let (image, tag) = split_reference(&reference);
        let base = GenericImage::new(image, tag).with_exposed_port(S3_PORT.tcp());
        let request = match self.images.storage_flavor() {
            // minio serves the directories under /data as buckets.
            StorageFlavor::Minio => base
                .with_wait_for(WaitFor::message_on_either_std("API:"))
                .with_entrypoint("sh")
                .with_env_var("MINIO_ROOT_USER", access_key)
                .with_env_var("MINIO_ROOT_PASSWORD", secret_key.expose())
                .with_cmd([
                    "-c".to_string(),
                    format!(
                        "mkdir -p /data/{bucket} && exec minio server /data --address :{S3_PORT}"
                    ),
                ]),
            StorageFlavor::Pgdrill => base
                .with_wait_for(WaitFor::message_on_stdout("listening on"))
                .with_env_var("PGDRILL_S3_ACCESS_KEY", access_key)
                .with_env_var("PGDRILL_S3_SECRET_KEY", secret_key.expose())
                .with_cmd([
                    PGDRILL.to_string(),
                    "s3-serve".into(),
                    "--dir".into(),
                    "/data".into(),
                    "--listen".into(),
                    format!("0.0.0.0:{S3_PORT}"),
                    "--bucket".into(),
                    bucket.to_string(),
                    "--fault-file".into(),
                    STORAGE_FAULT_FILE.into(),
                ]),
        };
        let mut request = request
            .with_container_name(name)
            .with_network(self.drill.clone())
            .with_label(LABEL, self.drill.clone())
            .with_label(OWNER_LABEL, owner())
            .with_mount(Mount::volume_mount(volume, "/data"))
            .with_mount(
                Mount::bind_mount(self.pgdrill.display().to_string(), PGDRILL)
                    .with_access_mode(AccessMode::ReadOnly),
            )
            .with_startup_timeout(Duration::from_secs(120));
        if let Some(consumer) = self.log_consumer("storage") {
            request = request.with_log_consumer(consumer);
        }
        let what = format!("starting the storage container ({})", self.images.storage);
        Ok(request.start().await.map_err(docker_err(what))?)
    }

    /// Waits until the bucket answers a listing from this host.
    async fn wait_storage(&self) -> Result<(), EnvError> {
        let store = self.host_store()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match store.list("wal_005/").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(EnvError::Other(format!(
                        "the storage container does not answer S3 requests: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The storage as this host reaches it (for faults).
    fn host_store(&self) -> Result<std::sync::Arc<dyn crate::backup::store::Store>, EnvError> {
        let settings = crate::backup::config::Settings::load(Some(&self.facts.storage_settings))?;
        Ok(crate::backup::store::open(&settings.storage)?)
    }

    /// Outages of this drill's storage container.
    fn outage(&self) -> ContainersOutage {
        ContainersOutage {
            storage: self.storage().id().to_string(),
            network: self.drill.clone(),
        }
    }

    fn storage(&self) -> &ContainerAsync<GenericImage> {
        self.storage
            .as_ref()
            .expect("storage runs for the whole drill")
    }

    /// Runs `pgdrill --env-dir /etc/wal-g/env ARGS` as `postgres` in
    /// `container`.
    async fn exec_tool(
        container: &ContainerAsync<GenericImage>,
        args: &[&str],
    ) -> Result<ToolRun, EnvError> {
        let mut cmd = vec![
            "runuser",
            "-u",
            "postgres",
            "--",
            PGDRILL,
            "--env-dir",
            ENV_DIR,
        ];
        cmd.extend_from_slice(args);
        exec(container, &cmd).await
    }

    /// Restores `backup` into a fresh volume and server `label`; see
    /// [`super::Environment::restore`]. With `archive`, the server archives
    /// as the primary does.
    async fn restore_server(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&super::zone::TargetTime>,
        archive: bool,
        phases: &mut dyn super::RestorePhases,
    ) -> Result<Restored, EnvError> {
        let volume = self.volume(&format!("restore-{label}"));
        let mut fetch_cmd = vec![PGDRILL.to_string(), "--env-dir".into(), ENV_DIR.into()];
        fetch_cmd.extend(super::backup_fetch_args(PGDATA, backup, target, archive));
        let started = Instant::now();
        phases.reached(crate::scenario::RestorePhase::BackupFetch);
        let fetcher = self
            .request(&format!("fetch-{label}"), Some(&volume))
            .with_cmd(fetch_cmd)
            .with_ready_conditions(vec![WaitFor::Exit(ExitWaitStrategy::new())])
            .with_startup_timeout(Duration::from_secs(3600))
            .start()
            .await
            .map_err(docker_err(format!(
                "running backup-fetch for restore {label}"
            )))?;
        let fetch = started.elapsed();
        let code = fetcher
            .exit_code()
            .await
            .map_err(docker_err("reading backup-fetch's exit code"))?;
        if code != Some(0) {
            let stderr = fetcher.stderr_to_vec().await.unwrap_or_default();
            return Err(super::fetch_failed(
                code.map(|c| c as i32),
                &String::from_utf8_lossy(&stderr),
            ));
        }
        drop(fetcher);

        // The primary's settings come with the command line, not with the
        // backup: repeat what recovery and verification need.
        let mut settings = if archive {
            archiving_settings(Path::new(PGDRILL), Path::new(ENV_DIR), &[])
        } else {
            vec![("track_commit_timestamp".to_string(), "on".to_string())]
        };
        settings.extend(self.postgres_settings.iter().cloned());
        let started = Instant::now();
        phases.reached(crate::scenario::RestorePhase::WalReplay);
        let server = self
            .request(&format!("restore-{label}"), Some(&volume))
            .with_cmd(postgres_command(&settings))
            .start()
            .await
            .map_err(docker_err(format!("starting restore {label}")))?;
        let config = server_config(&server).await?;
        self.restores.insert(label.to_string(), server);
        let server = &self.restores[label];
        let log_tail = || async move {
            let log = server.stderr_to_vec().await.unwrap_or_default();
            tail(String::from_utf8_lossy(&log).trim(), 20)
        };
        let client = loop {
            match super::connect_once(&config).await {
                Ok(c) => break c,
                Err(e) => {
                    let running = server.is_running().await.unwrap_or(false);
                    if !running || started.elapsed() > Duration::from_secs(1800) {
                        let log = log_tail().await;
                        let error = format!("restore {label} did not come up ({e}); log:\n{log}");
                        return Err(super::recovery_failed(&log, error));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let start_to_consistent = started.elapsed();
        phases.reached(crate::scenario::RestorePhase::Consistent);
        let consistent_to_promoted =
            super::pg::wait_promoted(&client, label, Duration::from_secs(1800), log_tail).await?;
        let log = server.stderr_to_vec().await.unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        Ok(Restored {
            client,
            timings: RestoreTimings {
                scheduling: Duration::ZERO,
                fetch,
                start_to_consistent,
                consistent_to_promoted,
                wal_segments: super::restored_wal_files(&log),
            },
            stop: super::RecoveryStop::from_server_log(&log),
        })
    }

    /// Seconds a `backup-fetch LATEST` into a scratch directory of the tools
    /// container takes (shows what a link limit does to restores).
    async fn probe_fetch(&self) -> Result<f64, EnvError> {
        let tools = self.tools.as_ref().expect("the tools container runs");
        let dir = "/tmp/pgdrill-probe";
        let started = Instant::now();
        let run = Self::exec_tool(tools, &["backup-fetch", dir, "LATEST"]).await?;
        let took = started.elapsed().as_secs_f64();
        exec(tools, &["rm", "-rf", dir]).await?;
        if !run.status.success() {
            return Err(EnvError::BackupTool {
                command: format!("backup-fetch {dir} LATEST"),
                detail: format!("{}: {}", run.status, tail(run.stderr.trim(), 3)),
            });
        }
        Ok(took)
    }

    /// The storage container's process id on this host (for `tc`).
    async fn storage_pid(&self) -> Result<i64, EnvError> {
        let inspect = docker()
            .await?
            .inspect_container(self.storage().id(), None)
            .await
            .map_err(docker_err("inspecting the storage container"))?;
        inspect
            .state
            .and_then(|s| s.pid)
            .filter(|&p| p > 0)
            .ok_or_else(|| EnvError::Other("the storage container is not running".into()))
    }

    /// Removes the drill's volumes (after its containers are gone).
    fn remove_volumes(&mut self) {
        let volumes = std::mem::take(&mut self.volumes);
        if volumes.is_empty() {
            return;
        }
        block_on_in_drop(async move {
            for v in volumes {
                let _ = remove_volume(&v).await;
            }
        });
    }

    /// Removes the drill's volume for `what` now (its container is gone).
    async fn drop_volume(&mut self, what: &str) -> Result<(), ContainersError> {
        let name = volume_name(&self.drill, what);
        remove_volume(&name).await?;
        self.volumes.retain(|v| *v != name);
        Ok(())
    }
}

/// Makes the mounted settings readable by the containers' `postgres` user
/// (a Kubernetes Secret volume is 0644 too).
fn make_readable(dir: &Path) -> Result<(), ContainersError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(dir)? {
        let mode = if entry.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting the mode of {}", entry.display())))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, ContainersError> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))? {
        let path = entry.map_err(io_err("reading a directory"))?.path();
        if path.is_dir() {
            all.extend(walk(&path)?);
        } else {
            all.push(path);
        }
    }
    Ok(all)
}

/// Connection settings for a server container, through its mapped port.
async fn server_config(
    container: &ContainerAsync<GenericImage>,
) -> Result<tokio_postgres::Config, EnvError> {
    let port = container
        .get_host_port_ipv4(ContainerPort::Tcp(5432))
        .await
        .map_err(docker_err("reading a server's port"))?;
    Ok(super::pg::loopback_config(port))
}

/// The entrypoint's setting of the WAL segment a new cluster writes first
/// (`ci/images/docker-entrypoint.sh`; the official image has none).
const START_SEGMENT_VAR: &str = "POSTGRES_INITDB_START_SEGMENT";

/// Checks that the primary behind `client` writes at or after `segment`:
/// an image whose entrypoint ignores [`START_SEGMENT_VAR`] must not pass
/// for one that crossed the boundary.
async fn started_in(
    client: &tokio_postgres::Client,
    segment: &str,
    image: &str,
) -> Result<(), EnvError> {
    let current: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(super::pg::pg_err("reading the primary's WAL position"))?
        .get(0);
    // Names of one timeline order as their positions do.
    if current.as_str() < segment {
        return Err(EnvError::Other(format!(
            "the primary writes {current}, before the start segment {segment}: image {image} \
             ignores {START_SEGMENT_VAR} (pgdrill's images honour it); use them, or set \
             `conditions.start_segment: initdb`"
        )));
    }
    Ok(())
}

/// Runs `cmd` in `container`; its output and exit status. (Through
/// bollard: testcontainers' exec result cannot be held across an await in
/// a `Send` future.)
async fn exec(container: &ContainerAsync<GenericImage>, cmd: &[&str]) -> Result<ToolRun, EnvError> {
    exec_in(container.id(), cmd).await
}

/// [`exec`] in the container with id `container`.
async fn exec_in(container: &str, cmd: &[&str]) -> Result<ToolRun, EnvError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let what = || format!("running `{}`", cmd.join(" "));
    let docker = docker().await?;
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(docker_err(what()))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(docker_err(what()))?
    {
        while let Some(frame) = output.next().await {
            match frame.map_err(docker_err(what()))? {
                bollard::container::LogOutput::StdOut { message } => {
                    stdout.extend_from_slice(&message)
                }
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.extend_from_slice(&message)
                }
                _ => {}
            }
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(docker_err(what()))?
        .exit_code
        .ok_or_else(|| {
            EnvError::Other(format!("`{}` did not report an exit code", cmd.join(" ")))
        })?;
    Ok(ToolRun {
        status: std::process::ExitStatus::from_raw(((code as i32) & 0xff) << 8),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

#[async_trait::async_trait]
impl super::Environment for ContainersEnvironment {
    fn facts(&self) -> &super::EnvFacts {
        &self.facts
    }

    fn primary_config(&self) -> tokio_postgres::Config {
        self.primary_config.clone()
    }

    async fn backup_tool_status(&self, args: &[&str]) -> Result<ToolRun, EnvError> {
        let container = self
            .primary
            .as_ref()
            .or(self.tools.as_ref())
            .expect("the tools container runs for the whole drill");
        Self::exec_tool(container, args).await
    }

    fn storage_faults(&mut self) -> Option<&mut dyn super::StorageFaults> {
        Some(self)
    }

    async fn kill_primary(&mut self) -> Result<(), EnvError> {
        if let Some(primary) = self.primary.take() {
            docker()
                .await?
                .kill_container(
                    primary.id(),
                    Some(bollard::query_parameters::KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
                .await
                .map_err(docker_err("SIGKILLing the primary"))?;
            primary
                .rm()
                .await
                .map_err(docker_err("removing the primary"))?;
            self.drop_volume("primary").await?;
        }
        Ok(())
    }

    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&super::zone::TargetTime>,
        phases: &mut dyn super::RestorePhases,
    ) -> Result<Restored, EnvError> {
        self.restore_server(label, backup, target, false, phases)
            .await
    }

    fn outage_switch(&self) -> Option<std::sync::Arc<dyn super::OutageSwitch>> {
        Some(std::sync::Arc::new(self.outage()))
    }

    async fn fail_over(
        &mut self,
        label: &str,
        backup: &str,
        target: &super::zone::TargetTime,
    ) -> Result<Restored, EnvError> {
        if let Some(old) = self.primary.take() {
            old.stop_with_timeout(Some(60))
                .await
                .map_err(docker_err("stopping the old primary"))?;
        }
        let restored = self
            .restore_server(label, backup, Some(target), true, &mut super::Unwatched)
            .await?;
        let server = self
            .restores
            .remove(label)
            .expect("restore_server keeps the server");
        self.primary_config = server_config(&server).await?;
        self.primary = Some(server);
        Ok(restored)
    }

    async fn amcheck(&self, label: &str) -> Result<crate::verify::Check, EnvError> {
        let server = self
            .restores
            .get(label)
            .ok_or_else(|| EnvError::Other(format!("no restore {label}")))?;
        let mut cmd = vec!["runuser", "-u", "postgres", "--", "pg_amcheck"];
        cmd.extend_from_slice(crate::verify::AMCHECK_ARGS);
        Ok(exec(server, &cmd)
            .await?
            .judged(crate::verify::amcheck_check))
    }

    async fn checksums(&mut self, label: &str) -> Result<crate::verify::Check, EnvError> {
        let server = self
            .restores
            .get(label)
            .ok_or_else(|| EnvError::Other(format!("no restore {label}")))?;
        // The image's stop signal is SIGINT: a fast, clean shutdown.
        server
            .stop_with_timeout(Some(60))
            .await
            .map_err(docker_err(format!("stopping restore {label}")))?;
        let volume = self.volume(&format!("restore-{label}"));
        let checker = self
            .request(&format!("checksums-{label}"), Some(&volume))
            .with_cmd([
                "runuser",
                "-u",
                "postgres",
                "--",
                "pg_checksums",
                "--check",
                "-D",
                PGDATA,
            ])
            .with_ready_conditions(vec![WaitFor::Exit(ExitWaitStrategy::new())])
            .with_startup_timeout(Duration::from_secs(3600))
            .start()
            .await
            .map_err(docker_err(format!(
                "running pg_checksums on restore {label}"
            )))?;
        let code = checker
            .exit_code()
            .await
            .map_err(docker_err("reading pg_checksums' exit code"))?;
        let stdout = checker.stdout_to_vec().await.unwrap_or_default();
        let stderr = checker.stderr_to_vec().await.unwrap_or_default();
        let _ = checker.rm().await;
        Ok(crate::verify::checksums_check(
            code == Some(0),
            &String::from_utf8_lossy(&stdout),
            &String::from_utf8_lossy(&stderr),
        ))
    }

    async fn discard_restore(&mut self, label: &str) {
        if let Some(server) = self.restores.remove(label) {
            let _ = server.rm().await;
        }
        let _ = self.drop_volume(&format!("restore-{label}")).await;
    }

    async fn teardown(mut self: Box<Self>, keep: bool) -> Option<PathBuf> {
        if keep {
            // Drop leaves containers, network and volumes alone; a marker
            // volume tells later sweeps to leave this drill alone too.
            self.keep = true;
            if let Ok(docker) = docker().await {
                let _ = docker
                    .create_volume(bollard::models::VolumeCreateRequest {
                        name: Some(kept_marker(&self.drill)),
                        ..Default::default()
                    })
                    .await;
            }
            eprintln!(
                "pgdrill: kept containers, volumes and network {drill}: `docker ps -a --filter label={LABEL}={drill}`; remove them with `docker rm -fv $(docker ps -aq --filter label={LABEL}={drill}); docker volume rm $(docker volume ls -q --filter name={drill}-); docker network rm {drill}`",
                drill = self.drill
            );
            return Some(self.work.keep());
        }
        // Containers first (the network goes with the last one), then the
        // volumes they used.
        let restores = std::mem::take(&mut self.restores).into_values();
        let containers = self
            .primary
            .take()
            .into_iter()
            .chain(restores)
            .chain(self.tools.take())
            .chain(self.storage.take());
        for container in containers {
            let _ = container.rm().await;
        }
        for volume in std::mem::take(&mut self.volumes) {
            let _ = remove_volume(&volume).await;
        }
        None
    }
}

/// Storage outages of a containers drill: the storage container frozen or
/// cut off its network, by id, so a task can hold it while a restore runs.
struct ContainersOutage {
    storage: String,
    network: String,
}

#[async_trait::async_trait]
impl super::OutageSwitch for ContainersOutage {
    async fn outage(
        &self,
        mode: crate::scenario::OutageMode,
        duration: Duration,
    ) -> Result<String, EnvError> {
        use crate::scenario::OutageMode;
        let docker = docker().await?;
        match mode {
            OutageMode::Pause => {
                docker
                    .pause_container(&self.storage)
                    .await
                    .map_err(docker_err("pausing the storage"))?;
                tokio::time::sleep(duration).await;
                docker
                    .unpause_container(&self.storage)
                    .await
                    .map_err(docker_err("unpausing the storage"))?;
            }
            OutageMode::Disconnect => {
                docker
                    .disconnect_network(
                        &self.network,
                        bollard::models::NetworkDisconnectRequest {
                            container: self.storage.clone(),
                            force: Some(true),
                        },
                    )
                    .await
                    .map_err(docker_err("disconnecting the storage"))?;
                tokio::time::sleep(duration).await;
                docker
                    .connect_network(
                        &self.network,
                        bollard::models::NetworkConnectRequest {
                            container: self.storage.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(docker_err("reconnecting the storage"))?;
            }
            OutageMode::Errors => {
                // Replaced whole, so the server never reads half of it.
                let set = format!(
                    "printf errors > {STORAGE_FAULT_FILE}.tmp && mv {STORAGE_FAULT_FILE}.tmp {STORAGE_FAULT_FILE}"
                );
                let clear = format!("rm -f {STORAGE_FAULT_FILE}");
                let run = |script: String| async move {
                    let run = exec_in(&self.storage, &["sh", "-c", &script]).await?;
                    match run.status.success() {
                        true => Ok(()),
                        false => Err(EnvError::Other(format!(
                            "the storage container's fault file (`{script}`): {}: {} (the \
                             `errors` mode needs pgdrill's own S3 server as the storage)",
                            run.status,
                            run.stderr.trim()
                        ))),
                    }
                };
                run(set).await?;
                tokio::time::sleep(duration).await;
                run(clear).await?;
            }
        }
        Ok(format!(
            "storage {} for {duration:?}",
            match mode {
                OutageMode::Pause => "paused",
                OutageMode::Errors => "answering every request 503",
                OutageMode::Disconnect => "disconnected from the network",
            }
        ))
    }
}

#[async_trait::async_trait]
impl super::StorageFaults for ContainersEnvironment {
    async fn storage_outage(
        &mut self,
        mode: crate::scenario::OutageMode,
        duration: Duration,
    ) -> Result<String, EnvError> {
        super::OutageSwitch::outage(&self.outage(), mode, duration).await
    }

    async fn limit_storage_link(
        &mut self,
        limit: &crate::env::fault::LinkLimit,
    ) -> Result<String, EnvError> {
        let before = self.probe_fetch().await?;
        let pid = self.storage_pid().await?;
        for args in limit.tc_commands("eth0") {
            let out = tokio::process::Command::new("nsenter")
                .arg("-t")
                .arg(pid.to_string())
                .arg("-n")
                .arg("tc")
                .args(&args)
                .output()
                .await
                .map_err(io_err(
                    "running nsenter tc (needs root, util-linux and iproute2 on this host)",
                ))?;
            if !out.status.success() {
                return Err(EnvError::Other(format!(
                    "tc {} in the storage container's network namespace failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let after = self.probe_fetch().await?;
        Ok(format!(
            "storage link limited: {limit}; backup-fetch LATEST took {before:.1}s before, {after:.1}s after"
        ))
    }
}

impl Drop for ContainersEnvironment {
    fn drop(&mut self) {
        if self.keep {
            // Leave containers, network and volumes for inspection.
            std::mem::forget(self.primary.take());
            std::mem::forget(std::mem::take(&mut self.restores));
            std::mem::forget(self.tools.take());
            std::mem::forget(self.storage.take());
            return;
        }
        // testcontainers removes each container (and then the network) as
        // it drops; volumes can go only after their containers.
        self.primary.take();
        self.restores.clear();
        self.tools.take();
        self.storage.take();
        self.remove_volumes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pull_hints_at_the_local_images() {
        let e = docker_err("starting x")("failed to pull the image 'minio/minio:latest'");
        assert!(e.to_string().contains("PGDRILL_IMAGES=local"), "{e}");
        let e = docker_err("starting x")("no such container");
        assert!(!e.to_string().contains("hint"), "{e}");
    }
}
