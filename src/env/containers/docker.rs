//! Calls to the Docker engine that testcontainers does not make: the
//! engine's client, volumes, container output to files, and finishing async
//! work from `Drop`.

use testcontainers::bollard;
use testcontainers::core::logs::consumer::LogConsumer;
use testcontainers::core::logs::LogFrame;

use super::{docker_err, ContainersError};

/// Whether a Docker engine answers; `Err` says why not.
pub async fn engine_answers() -> Result<String, String> {
    let docker = testcontainers::core::client::docker_client_instance()
        .await
        .map_err(|e| format!("no Docker engine answers: {e}"))?;
    let version = docker
        .version()
        .await
        .map_err(|e| format!("no Docker engine answers: {e}"))?;
    Ok(version.version.unwrap_or_default())
}

/// Removes Docker volume `name`.
pub(super) async fn remove_volume(name: &str) -> Result<(), ContainersError> {
    docker()
        .await?
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
        .map_err(docker_err(format!("removing volume {name}")))
}

pub(super) async fn docker() -> Result<bollard::Docker, ContainersError> {
    testcontainers::core::client::docker_client_instance()
        .await
        .map_err(docker_err("connecting to the engine"))
}

/// Appends a container's output to a file in the drill's report directory.
pub(super) struct LogFile(pub(super) std::sync::Mutex<std::fs::File>);

impl LogConsumer for LogFile {
    fn accept<'a>(&'a self, record: &'a LogFrame) -> futures::future::BoxFuture<'a, ()> {
        use std::io::Write;
        let bytes = match record {
            LogFrame::StdOut(b) | LogFrame::StdErr(b) => b,
        };
        if let Ok(mut f) = self.0.lock() {
            let _ = f.write_all(bytes);
        }
        Box::pin(async {})
    }
}
