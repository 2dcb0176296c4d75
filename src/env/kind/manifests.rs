//! The `kind` environment's Kubernetes objects: the manifests in
//! `fixtures/k8s/` (the seed's topology with pgdrill in place of WAL-G),
//! parsed into typed k8s-openapi objects and rendered per drill: namespace,
//! labels, images, the backup tool's settings and how the pgdrill binary
//! reaches the pods. Pure: nothing here talks to a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Pod, PodSpec, PodTemplateSpec, Secret,
    Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;

use super::PGDATA;
use crate::env::containers::{StorageFlavor, LABEL, OWNER_LABEL};
use crate::env::image_layout::{DATA_MOUNT, ENV_DIR, PGDRILL};

/// A manifest that does not parse into its object, or lacks a part the
/// rendering needs: a defect of `fixtures/k8s/`, named with the file.
#[derive(Debug, thiserror::Error)]
#[error("fixtures/k8s/{file}: {detail}")]
pub struct ManifestError {
    pub file: &'static str,
    pub detail: String,
}

/// How the pgdrill binary under test reaches the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary {
    /// A file on the node (kind: `kind-config.yaml` mounts the build
    /// directory at `/pgdrill`), mounted at `/usr/local/bin/pgdrill`.
    HostPath(String),
    /// Baked into the images at `/usr/local/bin/pgdrill`
    /// (`PGDRILL_KUBE_IMAGE`); no volume.
    InImage,
}

/// What makes one drill's objects its own.
#[derive(Debug, Clone)]
pub struct Drill {
    /// The drill's id: its namespace, and the `org.pgdrill.drill` label.
    pub id: String,
    /// `host:pid` of the pgdrill process (`org.pgdrill.owner`).
    pub owner: String,
    /// The PostgreSQL image (pgdrill runs in it too).
    pub postgres_image: String,
    /// The S3 storage image, and what runs in it.
    pub storage_image: String,
    pub storage_flavor: StorageFlavor,
    pub binary: Binary,
    /// `delete --confirm retain N` of the backup CronJob.
    pub retain: u32,
    /// The `postgres` user's uid and gid in the image, which every pod
    /// that touches a data directory runs as (999 in the official image,
    /// 100:102 in the local one).
    pub run_as: (i64, i64),
}

impl Drill {
    /// The namespace of the primary, its storage and CronJobs.
    pub fn namespace(&self) -> &str {
        &self.id
    }

    /// The DR namespace restores happen in (the seed's DR test).
    pub fn dr_namespace(&self) -> String {
        format!("{}-dr", self.id)
    }

    /// The labels every object of the drill carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL.to_string(), self.id.clone()),
            // Label values allow no ':'.
            (OWNER_LABEL.to_string(), self.owner.replace(':', ".")),
        ])
    }
}

/// The files, read at build time so that the binary carries them.
mod files {
    pub const NAMESPACE: &str = include_str!("../../../fixtures/k8s/namespace.yaml");
    pub const SECRET: &str = include_str!("../../../fixtures/k8s/walg-config.yaml");
    pub const CONFIG: &str = include_str!("../../../fixtures/k8s/postgres-config.yaml");
    pub const POSTGRES: &str = include_str!("../../../fixtures/k8s/postgres.yaml");
    pub const POSTGRES_SERVICE: &str = include_str!("../../../fixtures/k8s/postgres-service.yaml");
    pub const STORAGE: &str = include_str!("../../../fixtures/k8s/storage.yaml");
    pub const STORAGE_SERVICE: &str = include_str!("../../../fixtures/k8s/storage-service.yaml");
    pub const BACKUP_CRONJOB: &str = include_str!("../../../fixtures/k8s/backup-cronjob.yaml");
    pub const MONITOR_CRONJOB: &str = include_str!("../../../fixtures/k8s/monitor-cronjob.yaml");
    pub const PITR_PVC: &str = include_str!("../../../fixtures/k8s/pitr-pvc.yaml");
    pub const PITR_JOB: &str = include_str!("../../../fixtures/k8s/pitr-job.yaml");
    pub const RESTORE_POD: &str = include_str!("../../../fixtures/k8s/restore-pod.yaml");
    pub const TOOLS: &str = include_str!("../../../fixtures/k8s/tools.yaml");
    pub const STORAGE_PVC: &str = include_str!("../../../fixtures/k8s/storage-pvc.yaml");
    pub const STORAGE_CUT: &str = include_str!("../../../fixtures/k8s/storage-cut.yaml");
}

fn parse<T: DeserializeOwned>(file: &'static str, text: &str) -> Result<T, ManifestError> {
    serde_saphyr::from_str(text).map_err(|e| ManifestError {
        file,
        detail: e.to_string(),
    })
}

/// Reads manifest `file` (its `text`) into the drill's object in
/// `namespace`.
fn load<T: DeserializeOwned + Metadata<Ty = ObjectMeta>>(
    file: &'static str,
    text: &str,
    drill: &Drill,
    namespace: &str,
) -> Result<T, ManifestError> {
    let mut object: T = parse(file, text)?;
    own(object.metadata_mut(), drill, Some(namespace));
    Ok(object)
}

/// Objects whose pods come from a template.
trait PodTemplated: Metadata<Ty = ObjectMeta> {
    /// The pod template; with a CronJob, labels its job template too.
    fn pod_template(&mut self, drill: &Drill) -> Option<&mut PodTemplateSpec>;
}

impl PodTemplated for Deployment {
    fn pod_template(&mut self, _: &Drill) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl PodTemplated for StatefulSet {
    fn pod_template(&mut self, _: &Drill) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl PodTemplated for Job {
    fn pod_template(&mut self, _: &Drill) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl PodTemplated for CronJob {
    fn pod_template(&mut self, drill: &Drill) -> Option<&mut PodTemplateSpec> {
        let job = &mut self.spec.as_mut()?.job_template;
        own_template(&mut job.metadata, drill);
        job.spec.as_mut().map(|s| &mut s.template)
    }
}

/// The pod spec of `object`'s template, labelled as the drill's.
fn pod_of<'a, T: PodTemplated>(
    object: &'a mut T,
    file: &'static str,
    drill: &Drill,
) -> Result<&'a mut PodSpec, ManifestError> {
    let template = object
        .pod_template(drill)
        .ok_or_else(|| missing(file, "pod template"))?;
    own_template(&mut template.metadata, drill);
    template
        .spec
        .as_mut()
        .ok_or_else(|| missing(file, "pod spec"))
}

fn missing(file: &'static str, what: &str) -> ManifestError {
    ManifestError {
        file,
        detail: format!("has no {what}"),
    }
}

/// The objects of a drill's primary namespace, in the order they are
/// created (what others need first).
#[derive(Debug, Clone)]
pub struct Primary {
    pub namespace: Namespace,
    pub dr_namespace: Namespace,
    /// The env directory Secret, once per namespace.
    pub secret: Secret,
    pub dr_secret: Secret,
    pub config: ConfigMap,
    pub storage_claim: PersistentVolumeClaim,
    pub storage: Deployment,
    pub storage_service: Service,
    pub postgres: StatefulSet,
    pub postgres_service: Service,
    pub backup_cronjob: CronJob,
    pub monitor_cronjob: CronJob,
    pub tools: Pod,
}

/// The name of the primary's data volume claim (the StatefulSet's
/// `postgres-data` template, pod `postgres-0`).
pub const PRIMARY_PVC: &str = "postgres-data-postgres-0";
/// The primary's pod.
pub const PRIMARY_POD: &str = "postgres-0";
/// The container beside PostgreSQL that runs the backup tool (the tools
/// pod's container has the same name).
pub const TOOL_CONTAINER: &str = "pgdrill";
/// The pod that runs the backup tool once the primary is gone.
pub const TOOLS_POD: &str = "pgdrill-tools";

/// Renders the primary namespace's objects: `settings` are the backup
/// tool's (the env directory, storage reached as `http://storage:9000`),
/// `postgres_settings` go into postgresql.conf after the file's own.
pub fn primary(
    drill: &Drill,
    settings: &[(String, String)],
    postgres_settings: &[(String, String)],
) -> Result<Primary, ManifestError> {
    let mut namespace: Namespace = parse("namespace.yaml", files::NAMESPACE)?;
    own(&mut namespace.metadata, drill, None);
    namespace.metadata.name = Some(drill.namespace().to_string());
    let mut dr_namespace = namespace.clone();
    dr_namespace.metadata.name = Some(drill.dr_namespace());

    let mut secret: Secret = load("walg-config.yaml", files::SECRET, drill, drill.namespace())?;
    secret.string_data = Some(settings.iter().cloned().collect());
    let mut dr_secret = secret.clone();
    dr_secret.metadata.namespace = Some(drill.dr_namespace());
    // The DR namespace reaches the primary's storage by its full name.
    if let Some(data) = dr_secret.string_data.as_mut() {
        if let Some(endpoint) = data.get_mut("AWS_ENDPOINT") {
            *endpoint = endpoint.replace(
                "//storage:",
                &format!("//storage.{}.svc.cluster.local:", drill.namespace()),
            );
        }
    }

    let mut config: ConfigMap = load(
        "postgres-config.yaml",
        files::CONFIG,
        drill,
        drill.namespace(),
    )?;
    let conf = config
        .data
        .as_mut()
        .and_then(|d| d.get_mut("postgresql.conf"))
        .ok_or_else(|| missing("postgres-config.yaml", "data.postgresql.conf"))?;
    for (k, v) in postgres_settings {
        conf.push_str(&format!("{k} = {}\n", crate::env::local::conf_value(v)));
    }

    let bucket = settings
        .iter()
        .find(|(k, _)| k == "WALG_S3_PREFIX")
        .and_then(|(_, v)| v.strip_prefix("s3://"))
        .and_then(|v| v.split('/').next())
        .unwrap_or("drill")
        .to_string();
    let ns = drill.namespace();
    let storage_claim = load("storage-pvc.yaml", files::STORAGE_PVC, drill, ns)?;
    let mut storage: Deployment = load("storage.yaml", files::STORAGE, drill, ns)?;
    {
        let pod = pod_of(&mut storage, "storage.yaml", drill)?;
        let container = pod
            .containers
            .first_mut()
            .ok_or_else(|| missing("storage.yaml", "container"))?;
        container.image = Some(drill.storage_image.clone());
        storage_command(container, drill.storage_flavor, &bucket);
        if drill.storage_flavor == StorageFlavor::Pgdrill {
            add_binary_mount(pod, &drill.binary);
        }
    }
    let storage_service = load("storage-service.yaml", files::STORAGE_SERVICE, drill, ns)?;

    let mut postgres: StatefulSet = load("postgres.yaml", files::POSTGRES, drill, ns)?;
    render_pod(pod_of(&mut postgres, "postgres.yaml", drill)?, drill);
    let claims = postgres
        .spec
        .iter_mut()
        .flat_map(|s| s.volume_claim_templates.iter_mut().flatten());
    for claim in claims {
        own(&mut claim.metadata, drill, None);
    }
    let postgres_service = load("postgres-service.yaml", files::POSTGRES_SERVICE, drill, ns)?;

    let retain = files::BACKUP_CRONJOB.replace("${RETAIN}", &drill.retain.to_string());
    let mut backup_cronjob: CronJob = load("backup-cronjob.yaml", &retain, drill, ns)?;
    render_pod(
        pod_of(&mut backup_cronjob, "backup-cronjob.yaml", drill)?,
        drill,
    );
    let mut monitor_cronjob: CronJob =
        load("monitor-cronjob.yaml", files::MONITOR_CRONJOB, drill, ns)?;
    render_pod(
        pod_of(&mut monitor_cronjob, "monitor-cronjob.yaml", drill)?,
        drill,
    );
    let mut tools: Pod = load("tools.yaml", files::TOOLS, drill, ns)?;
    render_pod(
        tools
            .spec
            .as_mut()
            .ok_or_else(|| missing("tools.yaml", "spec"))?,
        drill,
    );
    Ok(Primary {
        namespace,
        dr_namespace,
        secret,
        dr_secret,
        config,
        storage_claim,
        storage,
        storage_service,
        postgres,
        postgres_service,
        backup_cronjob,
        monitor_cronjob,
        tools,
    })
}

/// A point-in-time restore `label` in the DR namespace: a fresh volume
/// claim and the Job that runs `backup-fetch` into it, to `target` or
/// (None) the end of the archive; with `archive`, the restored server will
/// archive as the primary does (a failover), else never.
pub fn pitr(
    drill: &Drill,
    label: &str,
    backup: &str,
    target: Option<&crate::env::zone::TargetTime>,
    archive: bool,
) -> Result<(PersistentVolumeClaim, Job), ManifestError> {
    let namespace = if archive {
        drill.namespace().to_string()
    } else {
        drill.dr_namespace()
    };
    let claim_name = restore_claim(label);
    let mut claim: PersistentVolumeClaim =
        load("pitr-pvc.yaml", files::PITR_PVC, drill, &namespace)?;
    claim.metadata.name = Some(claim_name.clone());

    let mut job: Job = load("pitr-job.yaml", files::PITR_JOB, drill, &namespace)?;
    job.metadata.name = Some(format!("pitr-{label}"));
    let pod = pod_of(&mut job, "pitr-job.yaml", drill)?;
    render_pod(pod, drill);
    use_claim(pod, &claim_name);
    let container = pod
        .containers
        .first_mut()
        .ok_or_else(|| missing("pitr-job.yaml", "container"))?;
    let command = container
        .command
        .as_mut()
        .ok_or_else(|| missing("pitr-job.yaml", "command"))?;
    // The file shows a restore of LATEST; the drill's restore is the one
    // every environment runs.
    let verb = command
        .iter()
        .position(|w| w == "backup-fetch")
        .ok_or_else(|| missing("pitr-job.yaml", "backup-fetch in the command"))?;
    command.truncate(verb);
    command.extend(crate::env::backup_fetch_args(
        PGDATA, backup, target, archive,
    ));
    Ok((claim, job))
}

/// The NetworkPolicy that cuts the storage off (`storage_outage` with
/// `mode: pause`).
pub fn storage_cut(drill: &Drill) -> Result<NetworkPolicy, ManifestError> {
    load(
        "storage-cut.yaml",
        files::STORAGE_CUT,
        drill,
        drill.namespace(),
    )
}

/// The claim restore `label` goes into.
pub fn restore_claim(label: &str) -> String {
    format!("restore-{label}")
}

/// The server that recovers on restore `label`'s volume; `settings` are
/// repeated on its command line (the primary's come with the ConfigMap,
/// not with the backup).
pub fn restore_pod(
    drill: &Drill,
    label: &str,
    namespace: &str,
    settings: &[(String, String)],
) -> Result<Pod, ManifestError> {
    let mut pod: Pod = load("restore-pod.yaml", files::RESTORE_POD, drill, namespace)?;
    pod.metadata.name = Some(format!("restore-{label}"));
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("app".into(), format!("restore-{label}"));
    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| missing("restore-pod.yaml", "spec"))?;
    render_pod(spec, drill);
    use_claim(spec, &restore_claim(label));
    let container = spec
        .containers
        .first_mut()
        .ok_or_else(|| missing("restore-pod.yaml", "container"))?;
    container.args = Some(crate::env::image_layout::postgres_command(settings));
    Ok(pod)
}

/// What `kubectl create job --from=cronjob/NAME JOB` makes: the CronJob's
/// job template as a Job named `name`, marked as made by hand and owned
/// by the CronJob (so that deleting the CronJob deletes it).
pub fn job_from_cronjob(cronjob: &CronJob, name: &str) -> Result<Job, ManifestError> {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .ok_or_else(|| missing("backup-cronjob.yaml", "spec"))?;
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = Some(name.to_string());
    metadata.namespace.clone_from(&cronjob.metadata.namespace);
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    if let (Some(owner), Some(uid)) = (&cronjob.metadata.name, &cronjob.metadata.uid) {
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "CronJob".into(),
            name: owner.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
    }
    Ok(Job {
        metadata,
        spec: template.spec,
        status: None,
    })
}

/// Makes a backup Job (from the CronJob) take a full backup:
/// `backup-push --full`.
pub fn push_full(job: &mut Job) {
    let pods = job.spec.iter_mut().filter_map(|s| s.template.spec.as_mut());
    for container in pods.flat_map(|p| p.containers.iter_mut()) {
        for word in container.command.iter_mut().flatten() {
            *word = word.replace("backup-push /", "backup-push --full /");
        }
    }
}

/// Puts an object into `namespace` (when namespaced) with the drill's
/// labels.
fn own(meta: &mut ObjectMeta, drill: &Drill, namespace: Option<&str>) {
    meta.namespace = namespace.map(str::to_string);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(drill.labels());
}

/// Labels a pod or job template, so that clean-up finds its pods too.
fn own_template(meta: &mut Option<ObjectMeta>, drill: &Drill) {
    meta.get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .extend(drill.labels());
}

/// The drill's images in every container, and the pgdrill binary as the
/// drill delivers it.
fn render_pod(pod: &mut PodSpec, drill: &Drill) {
    let (uid, gid) = drill.run_as;
    if let Some(context) = pod.security_context.as_mut() {
        if context.run_as_user.is_some() {
            context.run_as_user = Some(uid);
        }
        if context.fs_group.is_some() {
            context.fs_group = Some(gid);
        }
    }
    for container in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
    {
        if let Some(user) = container
            .security_context
            .as_mut()
            .and_then(|c| c.run_as_user.as_mut())
        {
            *user = uid;
        }
    }
    for container in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
    {
        container.image = Some(drill.postgres_image.clone());
    }
    match &drill.binary {
        Binary::HostPath(path) => {
            for volume in pod.volumes.iter_mut().flatten() {
                if let Some(host) = volume
                    .host_path
                    .as_mut()
                    .filter(|_| volume.name == "pgdrill")
                {
                    host.path.clone_from(path);
                }
            }
        }
        Binary::InImage => {
            if let Some(volumes) = pod.volumes.as_mut() {
                volumes.retain(|v| v.name != "pgdrill");
            }
            for container in pod
                .containers
                .iter_mut()
                .chain(pod.init_containers.iter_mut().flatten())
            {
                if let Some(mounts) = container.volume_mounts.as_mut() {
                    mounts.retain(|m| m.name != "pgdrill");
                }
            }
        }
    }
}

/// Mounts the pgdrill binary into a pod whose file does not (the storage
/// running `pgdrill s3-serve`).
fn add_binary_mount(pod: &mut PodSpec, binary: &Binary) {
    let Binary::HostPath(path) = binary else {
        return;
    };
    pod.volumes
        .get_or_insert_with(Vec::new)
        .push(k8s_openapi::api::core::v1::Volume {
            name: "pgdrill".into(),
            host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                path: path.clone(),
                type_: Some("File".into()),
            }),
            ..Default::default()
        });
    for container in &mut pod.containers {
        container.volume_mounts.get_or_insert_with(Vec::new).push(
            k8s_openapi::api::core::v1::VolumeMount {
                name: "pgdrill".into(),
                mount_path: PGDRILL.into(),
                read_only: Some(true),
                ..Default::default()
            },
        );
    }
}

/// Points the pod's `postgres-data` volume at claim `claim`.
fn use_claim(pod: &mut PodSpec, claim: &str) {
    for volume in pod.volumes.iter_mut().flatten() {
        if let Some(source) = volume
            .persistent_volume_claim
            .as_mut()
            .filter(|_| volume.name == "postgres-data")
        {
            source.claim_name = claim.to_string();
        }
    }
}

/// The storage container's command for `flavor`: minio serves the
/// directories under /data as buckets, so the bucket is made first.
fn storage_command(container: &mut Container, flavor: StorageFlavor, bucket: &str) {
    match flavor {
        StorageFlavor::Minio => {
            container.command = Some(vec!["sh".into(), "-c".into()]);
            container.args = Some(vec![format!(
                "mkdir -p /data/{bucket} && exec minio server /data --address :9000"
            )]);
        }
        StorageFlavor::Pgdrill => {
            container.command = Some(vec![
                PGDRILL.into(),
                "s3-serve".into(),
                "--dir".into(),
                "/data".into(),
                "--listen".into(),
                "0.0.0.0:9000".into(),
                "--bucket".into(),
                bucket.into(),
            ]);
            container.args = None;
            for var in container.env.iter_mut().flatten() {
                var.name = match var.name.as_str() {
                    "MINIO_ROOT_USER" => "PGDRILL_S3_ACCESS_KEY".into(),
                    "MINIO_ROOT_PASSWORD" => "PGDRILL_S3_SECRET_KEY".into(),
                    other => other.into(),
                };
            }
        }
    }
}

/// The env directory's mount point and the data directory's parent, as
/// the files use them (checked by a test, so the files and the code agree).
pub const MOUNTS: [&str; 2] = [ENV_DIR, DATA_MOUNT];

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(binary: Binary, flavor: StorageFlavor) -> Drill {
        Drill {
            id: "pgdrill-abc".into(),
            owner: "host:42".into(),
            postgres_image: "pgdrill/postgres:15-local".into(),
            storage_image: "pgdrill/storage:local".into(),
            storage_flavor: flavor,
            binary,
            retain: 3,
            run_as: (100, 102),
        }
    }

    fn settings() -> Vec<(String, String)> {
        vec![
            ("WALG_S3_PREFIX".into(), "s3://bucket-x/drill".into()),
            ("AWS_ENDPOINT".into(), "http://storage:9000".into()),
            ("AWS_ACCESS_KEY_ID".into(), "drill-1".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "secret".into()),
        ]
    }

    /// The pod spec of `object`'s template, as rendered.
    fn pod_spec<T: PodTemplated + Clone>(object: &T) -> PodSpec {
        let d = drill(Binary::InImage, StorageFlavor::Minio);
        let mut object = object.clone();
        pod_of(&mut object, "test", &d).unwrap().clone()
    }

    fn containers(pod: &PodSpec) -> Vec<&Container> {
        pod.containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .collect()
    }

    #[test]
    fn every_object_is_the_drills_and_follows_the_seed() {
        let d = drill(
            Binary::HostPath("/pgdrill/pgdrill".into()),
            StorageFlavor::Minio,
        );
        let settings_in = [("archive_timeout".to_string(), "1s".to_string())];
        let p = primary(&d, &settings(), &settings_in).unwrap();
        assert_eq!(p.namespace.metadata.name.as_deref(), Some("pgdrill-abc"));
        assert_eq!(
            p.dr_namespace.metadata.name.as_deref(),
            Some("pgdrill-abc-dr")
        );
        let metas = [
            &p.namespace.metadata,
            &p.secret.metadata,
            &p.config.metadata,
            &p.storage.metadata,
            &p.storage_service.metadata,
            &p.postgres.metadata,
            &p.postgres_service.metadata,
            &p.backup_cronjob.metadata,
            &p.monitor_cronjob.metadata,
            &p.tools.metadata,
        ];
        for meta in metas {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL], "pgdrill-abc", "{meta:?}");
            assert_eq!(labels[OWNER_LABEL], "host.42", "{meta:?}");
        }
        for meta in &metas[1..] {
            assert_eq!(meta.namespace.as_deref(), Some("pgdrill-abc"), "{meta:?}");
        }
        assert_eq!(
            p.dr_secret.metadata.namespace.as_deref(),
            Some("pgdrill-abc-dr")
        );
        assert_eq!(
            p.dr_secret.string_data.as_ref().unwrap()["AWS_ENDPOINT"],
            "http://storage.pgdrill-abc.svc.cluster.local:9000"
        );
        let conf = &p.config.data.as_ref().unwrap()["postgresql.conf"];
        assert!(
            conf.contains(
                "archive_command = 'pgdrill --env-dir /etc/wal-g/env --log warn wal-push %p'"
            ),
            "{conf}"
        );
        assert!(conf.ends_with("archive_timeout = '1s'\n"), "{conf}");

        let pod = pod_spec(&p.postgres);
        let names: Vec<&str> = containers(&pod).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["postgres", TOOL_CONTAINER, "restore-backup"]);
        for c in containers(&pod) {
            assert_eq!(c.image.as_deref(), Some("pgdrill/postgres:15-local"));
            let mounts: Vec<(&str, &str)> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| (m.name.as_str(), m.mount_path.as_str()))
                .collect();
            assert!(mounts.contains(&("walg-config", ENV_DIR)), "{mounts:?}");
            assert!(mounts.contains(&("pgdrill", PGDRILL)), "{mounts:?}");
            assert!(
                mounts.contains(&("postgres-data", DATA_MOUNT)),
                "{mounts:?}"
            );
        }
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(102));
        let tool = &pod.containers[1];
        assert_eq!(
            tool.security_context.as_ref().unwrap().run_as_user,
            Some(100)
        );
        // The server is localhost beside it, the Service from elsewhere:
        // never in the Secret, whose settings override the environment.
        assert!(!p
            .secret
            .string_data
            .as_ref()
            .unwrap()
            .contains_key("PGHOST"));
        let pghost = |c: &Container| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == "PGHOST")
                .and_then(|e| e.value.clone())
        };
        assert_eq!(pghost(&pod.containers[1]).as_deref(), Some("localhost"));
        let backup_pod = pod_spec(&p.backup_cronjob);
        assert_eq!(
            pghost(&backup_pod.containers[0]).as_deref(),
            Some("postgres")
        );
        let tools = p.tools.spec.as_ref().unwrap();
        assert_eq!(pghost(&tools.containers[0]).as_deref(), Some("postgres"));
        let binary = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "pgdrill")
            .unwrap();
        assert_eq!(binary.host_path.as_ref().unwrap().path, "/pgdrill/pgdrill");

        let job_pod = pod_spec(&p.backup_cronjob);
        let script = job_pod.containers[0].command.as_ref().unwrap().join(" ");
        assert!(
            script.contains("backup-push /var/lib/postgresql/data/pgdata"),
            "{script}"
        );
        assert!(script.contains("delete --confirm retain 3"), "{script}");
        let claim = job_pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "postgres-data")
            .unwrap();
        assert_eq!(
            claim.persistent_volume_claim.as_ref().unwrap().claim_name,
            PRIMARY_PVC
        );
        let monitor_pod = pod_spec(&p.monitor_cronjob);
        assert!(monitor_pod.containers[0]
            .command
            .as_ref()
            .unwrap()
            .contains(&"backup-check".to_string()));

        let storage_cut = storage_cut(&d).unwrap();
        assert_eq!(
            storage_cut.metadata.namespace.as_deref(),
            Some("pgdrill-abc")
        );
        let selector = storage_cut
            .spec
            .unwrap()
            .pod_selector
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(selector["app"], "storage");
        assert_eq!(
            p.storage_claim.metadata.name.as_deref(),
            Some("storage-data")
        );
        let storage = pod_spec(&p.storage);
        assert_eq!(
            storage.containers[0].image.as_deref(),
            Some("pgdrill/storage:local")
        );
        assert!(storage.containers[0].args.as_ref().unwrap()[0].contains("mkdir -p /data/bucket-x"));
    }

    #[test]
    fn the_binary_comes_from_the_node_or_from_the_image() {
        let d = drill(Binary::InImage, StorageFlavor::Pgdrill);
        let p = primary(&d, &settings(), &[]).unwrap();
        let pod = pod_spec(&p.postgres);
        assert!(pod.volumes.iter().flatten().all(|v| v.name != "pgdrill"));
        for c in containers(&pod) {
            assert!(c
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "pgdrill"));
        }
        let storage = pod_spec(&p.storage);
        let command = storage.containers[0].command.as_ref().unwrap();
        assert_eq!(command[..2], [PGDRILL.to_string(), "s3-serve".to_string()]);
        let env: Vec<&str> = storage.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, ["PGDRILL_S3_ACCESS_KEY", "PGDRILL_S3_SECRET_KEY"]);

        let hosted = drill(
            Binary::HostPath("/pgdrill/pgdrill".into()),
            StorageFlavor::Pgdrill,
        );
        let p = primary(&hosted, &settings(), &[]).unwrap();
        let storage = pod_spec(&p.storage);
        assert!(storage
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "pgdrill"));
    }

    #[test]
    fn a_pitr_restores_the_named_backup_into_a_fresh_claim_in_the_dr_namespace() {
        let d = drill(
            Binary::HostPath("/pgdrill/pgdrill".into()),
            StorageFlavor::Minio,
        );
        let t = crate::env::zone::TargetTime {
            instant: "2026-12-02T01:02:03.456789Z".parse().unwrap(),
            zone: std::sync::Arc::new(crate::env::zone::ServerZone::new("Asia/Kolkata").unwrap()),
        };
        let (claim, job) = pitr(
            &d,
            "pitr-1",
            "base_000000010000000000000004",
            Some(&t),
            false,
        )
        .unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("restore-pitr-1"));
        assert_eq!(claim.metadata.namespace.as_deref(), Some("pgdrill-abc-dr"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("pgdrill-abc-dr"));
        let pod = pod_spec(&job);
        let command = pod.containers[0].command.as_ref().unwrap();
        let tail: Vec<&str> = command.iter().skip(5).map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "backup-fetch",
                "/var/lib/postgresql/data/pgdata",
                "base_000000010000000000000004",
                "--no-archive",
                "--recovery-target-time",
                "2026-12-02 06:32:03.456789+05:30",
            ]
        );
        let data = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "postgres-data")
            .unwrap();
        assert_eq!(
            data.persistent_volume_claim.as_ref().unwrap().claim_name,
            "restore-pitr-1"
        );

        // A failover restores to a time in the primary's namespace and
        // archives; the end of the archive is --recover.
        let (_, job) = pitr(&d, "failover", "base_1", None, true).unwrap();
        assert_eq!(job.metadata.namespace.as_deref(), Some("pgdrill-abc"));
        let command = job.spec.unwrap().template.spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert!(
            !command.contains(&"--no-archive".to_string()),
            "{command:?}"
        );
        assert_eq!(command.last().map(String::as_str), Some("--recover"));

        let pod = restore_pod(
            &d,
            "pitr-1",
            "pgdrill-abc-dr",
            &[("a".into(), "b c".into())],
        )
        .unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.containers[0]
                .args
                .as_ref()
                .unwrap()
                .last()
                .map(String::as_str),
            Some("a=b c")
        );
        let data = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "postgres-data")
            .unwrap();
        assert_eq!(
            data.persistent_volume_claim.as_ref().unwrap().claim_name,
            "restore-pitr-1"
        );
    }

    #[test]
    fn a_job_from_the_cronjob_is_what_kubectl_create_job_from_makes() {
        let d = drill(Binary::InImage, StorageFlavor::Minio);
        let mut cronjob = primary(&d, &settings(), &[]).unwrap().backup_cronjob;
        cronjob.metadata.uid = Some("uid-1".into());
        let job = job_from_cronjob(&cronjob, "backup-1").unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("backup-1"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("pgdrill-abc"));
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap()["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("CronJob", "postgres-backup", "uid-1")
        );
        assert_eq!(
            job.spec,
            cronjob.spec.unwrap().job_template.spec,
            "the template is copied as it is"
        );
        let mut full = job.clone();
        push_full(&mut full);
        let script = full.spec.unwrap().template.spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap()
            .join(" ");
        assert!(
            script.contains("backup-push --full /var/lib/postgresql/data/pgdata"),
            "{script}"
        );
    }

    #[test]
    fn the_files_mount_where_the_code_expects() {
        for text in [
            files::POSTGRES,
            files::BACKUP_CRONJOB,
            files::PITR_JOB,
            files::RESTORE_POD,
        ] {
            for mount in MOUNTS {
                assert!(text.contains(&format!("mountPath: {mount}\n")), "{mount}");
            }
        }
    }
}
