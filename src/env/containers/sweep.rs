//! Labels on what a drill creates, and clean-up: what a drill left, what
//! drills whose pgdrill process died left, and removing a kept drill.

use testcontainers::bollard;

use super::docker::docker;
use super::{docker_err, ContainersError};

/// Label on everything a drill creates, valued with the drill's id.
pub const LABEL: &str = "org.pgdrill.drill";
/// Label with the `host:pid` of the pgdrill process that made a container.
pub const OWNER_LABEL: &str = "org.pgdrill.owner";

/// This process, as [`OWNER_LABEL`] names it.
pub(crate) fn owner() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// Whether the process an [`OWNER_LABEL`] names is gone (only decidable
/// for this host's processes).
pub(crate) fn owner_is_gone(label: &str) -> bool {
    let Some((host, pid)) = label.rsplit_once(':') else {
        return false;
    };
    let this_host = owner().rsplit_once(':').map(|(h, _)| h.to_string());
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    this_host.as_deref() == Some(host)
        && unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The volume that marks drill `drill` as kept (`--keep`).
pub(super) fn kept_marker(drill: &str) -> String {
    volume_name(drill, "kept")
}

/// Removes what drills whose pgdrill process died without cleaning up
/// (SIGKILL, a crash) left on the engine, except drills kept with
/// `--keep`; best effort, says what it did.
pub async fn sweep_abandoned() {
    let Ok(docker) = docker().await else { return };
    let Ok(containers) = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![OWNER_LABEL.to_string()])].into()),
            ..Default::default()
        }))
        .await
    else {
        return;
    };
    let kept: Vec<String> = docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .map(|v| v.volumes.unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    let mut drills = std::collections::BTreeSet::new();
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        if let (Some(owner), Some(drill)) = (labels.get(OWNER_LABEL), labels.get(LABEL)) {
            if owner_is_gone(owner) && !kept.contains(&kept_marker(drill)) {
                drills.insert(drill.clone());
            }
        }
    }
    for drill in drills {
        if remove_drill(&drill).await.is_ok() {
            eprintln!(
                "pgdrill: removed what drill {drill} left behind (its pgdrill process is gone)"
            );
        }
    }
}

/// Removes everything of drill `drill` from the engine (containers,
/// volumes, network), e.g. one kept with `--keep`.
pub async fn remove_drill(drill: &str) -> Result<(), ContainersError> {
    let docker = docker().await?;
    // leftovers lists containers first: volumes and the network are free
    // once they are gone.
    for left in leftovers(drill).await? {
        let result = match left.split_once(' ') {
            Some(("container", name)) => {
                docker
                    .remove_container(
                        name,
                        Some(bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await
            }
            Some(("volume", name)) => {
                docker
                    .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await
            }
            Some(("network", name)) => docker.remove_network(name).await,
            _ => Ok(()),
        };
        result.map_err(docker_err(format!("removing {left}")))?;
    }
    Ok(())
}

/// Drill ids with containers on the engine now (the [`LABEL`] values).
pub async fn drills_with_containers() -> Result<std::collections::BTreeSet<String>, ContainersError>
{
    let containers = docker()
        .await?
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![LABEL.to_string()])].into()),
            ..Default::default()
        }))
        .await
        .map_err(docker_err("listing containers"))?;
    Ok(containers
        .into_iter()
        .filter_map(|c| c.labels?.get(LABEL).cloned())
        .collect())
}

/// What drill `drill` left on the engine: its containers, volumes and
/// network, as sorted `kind name` lines (empty when it cleaned up):
/// containers come first.
pub async fn leftovers(drill: &str) -> Result<Vec<String>, ContainersError> {
    let docker = docker().await?;
    let mut left = Vec::new();
    let containers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![format!("{LABEL}={drill}")])].into()),
            ..Default::default()
        }))
        .await
        .map_err(docker_err("listing containers"))?;
    left.extend(
        containers
            .into_iter()
            .filter_map(|c| c.names?.into_iter().next())
            .map(|name| format!("container {}", name.trim_start_matches('/'))),
    );
    let volumes = docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .map_err(docker_err("listing volumes"))?;
    left.extend(
        volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.name.starts_with(&format!("{drill}-")))
            .map(|v| format!("volume {}", v.name)),
    );
    let networks = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .map_err(docker_err("listing networks"))?;
    left.extend(
        networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(drill))
            .map(|n| format!("network {}", n.name.unwrap_or_default())),
    );
    // Docker lists volumes in no fixed order.
    left.sort();
    Ok(left)
}

/// A Docker volume of the drill, removed with [`ContainersEnvironment`].
pub(super) fn volume_name(drill: &str, what: &str) -> String {
    format!("{drill}-{what}")
}
