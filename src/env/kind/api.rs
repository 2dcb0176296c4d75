//! The Kubernetes API calls the kind environment makes, on one kube-rs
//! client: create objects, wait for pods and Jobs, exec, logs, scale,
//! delete, and sweep what dead drills left.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{
    AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::{KubeError, KEPT_LABEL};
use crate::env::containers::{LABEL, OWNER_LABEL};
use crate::env::ToolRun;

/// How often waits look again.
const POLL: Duration = Duration::from_millis(500);

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |e| KubeError::Api {
        what,
        detail: e.to_string(),
    }
}

/// A finished Job's pod: when it ran, how it ended, its last log lines.
#[derive(Debug)]
pub struct JobRun {
    pub started: Instant,
    pub finished: Instant,
    /// The container's exit code (`None`: unknown).
    pub exit_code: Option<i32>,
    pub log_tail: String,
}

/// One cluster, reached through its API server.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    /// The cluster of `KUBECONFIG` (or `~/.kube/config`, or the in-cluster
    /// configuration), in `context` when given.
    pub async fn connect(context: Option<&str>) -> Result<Cluster, KubeError> {
        let config = match context {
            Some(context) => {
                let options = kube::config::KubeConfigOptions {
                    context: Some(context.to_string()),
                    ..Default::default()
                };
                kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                    KubeError::NoCluster(format!("kubeconfig context {context}: {e}"))
                })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                KubeError::NoCluster(format!(
                    "{e} (set KUBECONFIG, or run inside a cluster; for kind: ci/kind-up)"
                ))
            })?,
        };
        let client = Client::try_from(config)
            .map_err(|e| KubeError::NoCluster(format!("cannot build a client: {e}")))?;
        Ok(Cluster { client })
    }

    /// A cluster over any client (the tests' mocked API server).
    #[cfg(test)]
    pub fn with_client(client: Client) -> Cluster {
        Cluster { client }
    }

    /// The API server's version, e.g. "v1.33.1": proves it answers.
    pub async fn version(&self) -> Result<String, KubeError> {
        self.client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .map_err(|e| KubeError::NoCluster(format!("the API server does not answer: {e}")))
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates `object` in `namespace`; returns it as
    /// the server stored it (with its uid).
    pub async fn create<K>(&self, namespace: &str, object: &K) -> Result<K, KubeError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), object)
            .await
            .map_err(api_err(format!(
                "creating {} {}",
                K::kind(&()),
                object.meta().name.as_deref().unwrap_or("?")
            )))
    }

    /// Creates a namespace.
    pub async fn create_namespace(&self, namespace: &Namespace) -> Result<(), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.create(&PostParams::default(), namespace)
            .await
            .map(|_| ())
            .map_err(api_err(format!(
                "creating namespace {}",
                namespace.metadata.name.as_deref().unwrap_or("?")
            )))
    }

    /// Waits until pod `name` is Ready; fails at once when it ends.
    pub async fn wait_pod_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), KubeError> {
        let pods = self.pods(namespace);
        let what = format!("pod {namespace}/{name} to be ready");
        poll(&what, timeout, || async {
            let Some(pod) = pods
                .get_opt(name)
                .await
                .map_err(api_err(format!("reading pod {name}")))?
            else {
                return Ok(None);
            };
            if is_ready(&pod) {
                return Ok(Some(()));
            }
            match pod.status.and_then(|s| s.phase) {
                Some(phase) if phase == "Failed" || phase == "Succeeded" => {
                    Err(KubeError::Workload(format!(
                        "pod {namespace}/{name} ended ({phase}) before it was ready"
                    )))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    /// Waits for a Ready pod matching `selector`; returns its name.
    pub async fn ready_pod_of(
        &self,
        namespace: &str,
        selector: &str,
        timeout: Duration,
    ) -> Result<String, KubeError> {
        let pods = self.pods(namespace);
        let what = format!("a ready pod {selector} in {namespace}");
        poll(&what, timeout, || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(api_err(format!("listing pods {selector}")))?;
            Ok(list
                .items
                .into_iter()
                .find(is_ready)
                .and_then(|p| p.metadata.name))
        })
        .await
    }

    /// Waits until pod `name` no longer exists.
    pub async fn wait_pod_gone(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), KubeError> {
        let pods = self.pods(namespace);
        let what = format!("pod {namespace}/{name} to be gone");
        poll(&what, timeout, || async {
            let pod = pods
                .get_opt(name)
                .await
                .map_err(api_err(format!("reading pod {name}")))?;
            Ok(pod.is_none().then_some(()))
        })
        .await
    }

    /// Waits until Job `name` succeeded or failed; returns how its pod
    /// ran. A failed Job is a `JobRun` with its exit code, not an error.
    pub async fn wait_job(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<JobRun, KubeError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let started = std::sync::Mutex::new(None);
        let what = format!("job {namespace}/{name} to finish");
        let succeeded = poll(&what, timeout, || async {
            let job = jobs
                .get(name)
                .await
                .map_err(api_err(format!("reading job {name}")))?;
            let status = job.status.unwrap_or_default();
            if status.active.unwrap_or(0) > 0 {
                if let Ok(mut started) = started.lock() {
                    started.get_or_insert_with(Instant::now);
                }
            }
            let (succeeded, failed) = (status.succeeded.unwrap_or(0), status.failed.unwrap_or(0));
            Ok((succeeded > 0 || failed > 0).then_some(succeeded > 0))
        })
        .await?;
        let finished = Instant::now();
        let pod = self.job_pod(namespace, name).await?;
        let log_tail = match pod.as_ref().and_then(|p| p.metadata.name.as_deref()) {
            Some(pod_name) => self.log_tail(namespace, pod_name, "", 20).await,
            None => String::new(),
        };
        Ok(JobRun {
            started: started.into_inner().ok().flatten().unwrap_or(finished),
            finished,
            exit_code: pod
                .as_ref()
                .and_then(exit_code)
                .or(Some(i32::from(!succeeded))),
            log_tail,
        })
    }

    /// The pod a Job made (its `job-name` label).
    async fn job_pod(&self, namespace: &str, job: &str) -> Result<Option<Pod>, KubeError> {
        let list = self
            .pods(namespace)
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .map_err(api_err(format!("listing the pods of job {job}")))?;
        Ok(list.items.into_iter().next())
    }

    /// Runs pod `name`: one container of `image` running `command` as
    /// `uid:gid` on claim `claim` (mounted where the data volume goes);
    /// waits for it to end (within the start-up limit) and returns its
    /// output. The pod is deleted afterwards.
    pub async fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        image: &str,
        (uid, gid): (i64, i64),
        claim: &str,
        command: &[&str],
    ) -> Result<ToolRun, KubeError> {
        let timeout = super::START_TIMEOUT;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": { "runAsUser": uid, "fsGroup": gid },
                "containers": [{
                    "name": "run",
                    "image": image,
                    "command": command,
                    "volumeMounts": [{ "name": "postgres-data", "mountPath": crate::env::image_layout::DATA_MOUNT }],
                }],
                "volumes": [{ "name": "postgres-data", "persistentVolumeClaim": { "claimName": claim } }],
            }
        }))
        .map_err(|e| KubeError::Local(format!("building pod {name}: {e}")))?;
        let pods = self.pods(namespace);
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(api_err(format!("creating pod {name}")))?;
        let what = format!("pod {namespace}/{name} to end");
        let ended = poll(&what, timeout, || async {
            let pod = pods
                .get(name)
                .await
                .map_err(api_err(format!("reading pod {name}")))?;
            Ok(exit_code(&pod))
        })
        .await?;
        let output = self.log_tail(namespace, name, "run", 100_000).await;
        let _ = self.delete_pod_now(namespace, name).await;
        Ok(ToolRun {
            status: exit_status(ended),
            stdout: output.clone(),
            stderr: output,
        })
    }

    /// Runs `command` in `container` of `pod` and returns how it ended.
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<ToolRun, KubeError> {
        let what = || format!("running `{}` in {namespace}/{pod}", command.join(" "));
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = self
            .pods(namespace)
            .exec(pod, command.iter().map(|s| s.to_string()), &params)
            .await
            .map_err(api_err(what()))?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let out = attached.stdout();
        let err = attached.stderr();
        let status = attached.take_status();
        let read_out = async {
            if let Some(mut s) = out {
                let _ = s.read_to_string(&mut stdout).await;
            }
        };
        let read_err = async {
            if let Some(mut s) = err {
                let _ = s.read_to_string(&mut stderr).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = attached.join().await;
        let code = status.map(|s| status_exit_code(&s)).unwrap_or(1);
        Ok(ToolRun {
            status: exit_status(code),
            stdout,
            stderr,
        })
    }

    /// The last `lines` lines of a container's log (empty when they cannot
    /// be read: this is for error messages). `container` "" for the only
    /// one.
    pub async fn log_tail(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: i64,
    ) -> String {
        let params = LogParams {
            container: (!container.is_empty()).then(|| container.to_string()),
            tail_lines: Some(lines),
            ..Default::default()
        };
        self.pods(namespace)
            .logs(pod, &params)
            .await
            .unwrap_or_default()
    }

    /// Deletes `K` object `name` from `namespace`, with `params`.
    async fn delete<K>(
        &self,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(), KubeError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.delete(name, params)
            .await
            .map(|_| ())
            .map_err(api_err(format!("deleting {} {name}", K::kind(&()))))
    }

    /// Deletes a pod with no grace period (a crash).
    pub async fn delete_pod_now(&self, namespace: &str, name: &str) -> Result<(), KubeError> {
        self.delete::<Pod>(namespace, name, &DeleteParams::default().grace_period(0))
            .await
    }

    /// Deletes a pod with its grace period (a clean shutdown).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), KubeError> {
        self.delete::<Pod>(namespace, name, &DeleteParams::default())
            .await
    }

    pub async fn delete_claim(&self, namespace: &str, name: &str) -> Result<(), KubeError> {
        self.delete::<PersistentVolumeClaim>(namespace, name, &DeleteParams::default())
            .await
    }

    pub async fn delete_network_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(), KubeError> {
        self.delete::<NetworkPolicy>(namespace, name, &DeleteParams::default())
            .await
    }

    /// Sets the replicas of Deployment or StatefulSet `K` `name`.
    pub async fn scale<K>(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) -> Result<(), KubeError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(api_err(format!(
                "scaling {} {name} to {replicas}",
                K::kind(&())
            )))
    }

    pub async fn delete_namespace(&self, name: &str) -> Result<(), KubeError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(api_err(format!("deleting namespace {name}")))
    }

    pub async fn label_namespace(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<(), KubeError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
        namespaces
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(api_err(format!("labelling namespace {name}")))
    }

    /// Deletes the namespaces of drills whose pgdrill process on this host
    /// died without cleaning up, except kept ones; best effort, says what
    /// it did.
    pub async fn sweep_abandoned(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let Ok(list) = namespaces
            .list(&ListParams::default().labels(&format!("{LABEL},{OWNER_LABEL},!{KEPT_LABEL}")))
            .await
        else {
            return;
        };
        for ns in list.items {
            let labels = ns.metadata.labels.unwrap_or_default();
            let (Some(owner), Some(name)) = (labels.get(OWNER_LABEL), ns.metadata.name) else {
                continue;
            };
            if super::owner_label_is_gone(owner) && self.delete_namespace(&name).await.is_ok() {
                eprintln!("pgdrill: deleted namespace {name}, left by a drill whose pgdrill process is gone");
            }
        }
    }
}

/// Asks `check` every [`POLL`] until it has an answer, for at most
/// `timeout`; `what` says what was awaited, for the error.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, KubeError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(answer) = check().await? {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            return Err(KubeError::Workload(format!(
                "waited {}s for {what}, in vain",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a pod is Ready.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The exit code of a pod's first terminated container, if it ended.
fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
}

/// The exit code an exec's final status reports: 0 on success, the
/// `ExitCode` cause otherwise (1 when it names none).
fn status_exit_code(status: &Status) -> i32 {
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message.as_deref()?.parse().ok())
        })
        .unwrap_or(1)
}

fn exit_status(code: i32) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw((code & 0xff) << 8)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::mock::{answer, mocked};
    use super::*;

    fn namespace(name: &str, owner: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { LABEL: name, OWNER_LABEL: owner } }
        })
    }

    #[tokio::test]
    async fn a_sweep_deletes_only_what_dead_drills_of_this_host_left() {
        let (cluster, mut handle) = mocked();
        let sweep = tokio::spawn(async move { cluster.sweep_abandoned().await });
        let host = super::super::owner_label();
        let host = host.rsplit_once('.').unwrap().0.to_string();
        let list = answer(
            &mut handle,
            200,
            json!({
                "apiVersion": "v1", "kind": "NamespaceList", "metadata": {},
                "items": [
                    namespace("pgdrill-dead", &format!("{host}.999999999")),
                    namespace("pgdrill-alive", &super::super::owner_label()),
                    namespace("pgdrill-elsewhere", "another-host.1"),
                ]
            }),
        )
        .await;
        assert_eq!(list.method, "GET");
        let selector = format!("{LABEL},{OWNER_LABEL},!{KEPT_LABEL}");
        let query = list.uri.replace("%2C", ",").replace("%21", "!");
        assert!(query.contains(&selector), "{}", list.uri);
        let delete = answer(&mut handle, 200, namespace("pgdrill-dead", "x")).await;
        assert_eq!(delete.method, "DELETE");
        assert_eq!(delete.path(), "/api/v1/namespaces/pgdrill-dead");
        // Nothing else is asked (a request no one answers would hang it).
        tokio::time::timeout(Duration::from_secs(5), sweep)
            .await
            .expect("the sweep asked for more than the list and one delete")
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_job_reports_its_pods_exit_code_and_log() {
        let (cluster, mut handle) = mocked();
        let wait = tokio::spawn(async move {
            cluster
                .wait_job("ns", "pitr-r1", Duration::from_secs(5))
                .await
        });
        let job = answer(
            &mut handle,
            200,
            json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "pitr-r1" }, "status": { "failed": 1 } }),
        )
        .await;
        assert_eq!(job.path(), "/apis/batch/v1/namespaces/ns/jobs/pitr-r1");
        let pods = answer(
            &mut handle,
            200,
            json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [{
                    "metadata": { "name": "pitr-r1-abcde" },
                    "status": { "containerStatuses": [{
                        "name": "restore", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": { "terminated": { "exitCode": 200 } }
                    }] }
                }]
            }),
        )
        .await;
        assert!(
            pods.uri.contains("labelSelector=job-name%3Dpitr-r1"),
            "{}",
            pods.uri
        );
        let logs = answer(
            &mut handle,
            200,
            Value::String("{\"kind\":\"corrupt\"}\n".into()),
        )
        .await;
        assert!(
            logs.uri
                .starts_with("/api/v1/namespaces/ns/pods/pitr-r1-abcde/log"),
            "{}",
            logs.uri
        );
        let run = wait.await.unwrap().unwrap();
        assert_eq!(run.exit_code, Some(200));
        assert!(run.log_tail.contains("corrupt"), "{run:?}");
    }

    #[tokio::test]
    async fn a_crash_deletes_the_pod_at_once_and_scaling_patches_the_replicas() {
        let (cluster, mut handle) = mocked();
        let calls = tokio::spawn(async move {
            cluster.delete_pod_now("ns", "postgres-0").await.unwrap();
            cluster
                .scale::<k8s_openapi::api::apps::v1::StatefulSet>("ns", "postgres", 0)
                .await
                .unwrap();
            cluster
                .delete_claim("ns", "postgres-data-postgres-0")
                .await
                .unwrap();
        });
        let pod =
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "postgres-0" } });
        let delete = answer(&mut handle, 200, pod).await;
        assert_eq!(
            (delete.method.as_str(), delete.path()),
            ("DELETE", "/api/v1/namespaces/ns/pods/postgres-0")
        );
        assert_eq!(delete.body["gracePeriodSeconds"], 0, "{:?}", delete.body);
        let set = json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": { "name": "postgres" } });
        let patch = answer(&mut handle, 200, set).await;
        assert_eq!(
            (patch.method.as_str(), patch.path()),
            ("PATCH", "/apis/apps/v1/namespaces/ns/statefulsets/postgres")
        );
        assert_eq!(patch.body, json!({ "spec": { "replicas": 0 } }));
        let claim = json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "postgres-data-postgres-0" } });
        let delete = answer(&mut handle, 200, claim).await;
        assert_eq!(
            delete.path(),
            "/api/v1/namespaces/ns/persistentvolumeclaims/postgres-data-postgres-0"
        );
        calls.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_no_cluster_with_the_cause() {
        let (cluster, mut handle) = mocked();
        let version = tokio::spawn(async move { cluster.version().await });
        let asked = answer(&mut handle, 503, Value::String("unavailable".into())).await;
        assert_eq!(asked.path(), "/version");
        let e = version.await.unwrap().unwrap_err();
        assert!(matches!(e, KubeError::NoCluster(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("no Kubernetes cluster: the API server does not answer"),
            "{e}"
        );
    }

    #[test]
    fn an_execs_status_gives_its_exit_code() {
        let failed: Status = serde_json::from_value(json!({
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": "4" }] }
        }))
        .unwrap();
        assert_eq!(status_exit_code(&failed), 4);
        let ok: Status = serde_json::from_value(json!({ "status": "Success" })).unwrap();
        assert_eq!(status_exit_code(&ok), 0);
        let odd: Status = serde_json::from_value(json!({ "status": "Failure" })).unwrap();
        assert_eq!(status_exit_code(&odd), 1);
    }
}
