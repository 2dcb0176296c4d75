//! Which images a drill uses: the scenario's, defaulted by
//! `PGDRILL_IMAGES`, checked on the engine and recorded for the report.

use super::docker::docker;
use super::ContainersError;
use crate::env::ImageRecord;

/// The setting that picks image defaults: unset (or `default`) for the
/// images users know, `local` for those `ci/images/build` makes.
pub const IMAGES_SETTING: &str = "PGDRILL_IMAGES";

/// The PostgreSQL versions of the local images: 15 from Debian
/// (`ci/images/build`), 16 and 18 from PyPI (`ci/images/build-versions`).
pub const LOCAL_MAJORS: [u32; 3] = [15, 16, 18];

/// The images of a drill, as `name:tag` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    pub postgres: String,
    pub storage: String,
}

impl ImageChoice {
    /// The scenario's `images`, each defaulted by `PGDRILL_IMAGES`
    /// (`setting`): `postgres:<version>` and `minio/minio`, or with `local`
    /// the images `ci/images/build` makes (PostgreSQL 15, and 16 and 18
    /// from `ci/images/build-versions`).
    pub fn choose(
        postgres: Option<&str>,
        storage: Option<&str>,
        version: u32,
        setting: Option<&str>,
    ) -> Result<ImageChoice, ContainersError> {
        let (default_pg, default_storage) = match setting.unwrap_or("default") {
            "default" | "" => (format!("postgres:{version}"), "minio/minio".to_string()),
            "local" if postgres.is_none() && !LOCAL_MAJORS.contains(&version) => {
                return Err(ContainersError::Images(format!(
                    "{IMAGES_SETTING}=local provides PostgreSQL 15, 16 and 18 only, but the scenario asks for {version}\nhint: set postgres.version to one of them, or name an image in images.postgres"
                )))
            }
            "local" => (
                format!("pgdrill/postgres:{version}-local"),
                "pgdrill/storage:local".to_string(),
            ),
            other => {
                return Err(ContainersError::Images(format!(
                    "{IMAGES_SETTING}={other} is not understood\nhint: use `local` (images from ci/images/build) or leave it unset (postgres:<version> and minio/minio)"
                )))
            }
        };
        Ok(ImageChoice {
            postgres: postgres.map_or(default_pg, str::to_string),
            storage: storage.map_or(default_storage, str::to_string),
        })
    }

    /// What serves S3 in the storage image.
    pub fn storage_flavor(&self) -> StorageFlavor {
        if self.storage.contains("minio") {
            StorageFlavor::Minio
        } else {
            StorageFlavor::Pgdrill
        }
    }
}

/// What the storage container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFlavor {
    /// `minio server /data`.
    Minio,
    /// `pgdrill s3-serve` (the binary mounted in).
    Pgdrill,
}

/// Splits `name[:tag]` (a registry port is not a tag).
pub(super) fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

/// Checks that the images exist on the engine (they are never pulled
/// implicitly from here: a missing local image gets a hint).
pub async fn inspect_images(choice: &ImageChoice) -> Result<Vec<ImageRecord>, ContainersError> {
    let docker = docker().await?;
    let mut records = Vec::new();
    for (role, reference) in [("postgres", &choice.postgres), ("storage", &choice.storage)] {
        match docker.inspect_image(reference).await {
            Ok(image) => records.push(ImageRecord {
                role: role.to_string(),
                reference: reference.clone(),
                id: image.id.unwrap_or_default(),
                created: image.created.map(|c| c.to_string()).unwrap_or_default(),
            }),
            Err(e) if reference.starts_with("pgdrill/") => {
                return Err(ContainersError::Images(format!(
                    "image {reference} is not on this Docker engine ({e})\nhint: build it with ci/images/build and ci/images/build-versions (ci/setup runs both)"
                )))
            }
            Err(_) => {
                // testcontainers pulls it on first use; say so if that fails.
            }
        }
    }
    Ok(records)
}

/// Whether the images `scenario` would use are on this engine (a drill
/// never pulls local images): `Err` says which is missing and how to
/// build it.
pub async fn images_available(scenario: &crate::scenario::Scenario) -> Result<(), String> {
    let choice = ImageChoice::choose(
        scenario.images.postgres.as_deref(),
        scenario.images.storage.as_deref(),
        scenario.postgres.version,
        std::env::var(IMAGES_SETTING).ok().as_deref(),
    )
    .map_err(|e| e.to_string())?;
    inspect_images(&choice)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string().replace('\n', "; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_default_to_the_well_known_ones_and_local_means_ci_images() {
        let d = ImageChoice::choose(None, None, 16, None).unwrap();
        assert_eq!(d.postgres, "postgres:16");
        assert_eq!(d.storage, "minio/minio");
        assert_eq!(d.storage_flavor(), StorageFlavor::Minio);
        let l = ImageChoice::choose(None, None, 15, Some("local")).unwrap();
        assert_eq!(l.postgres, "pgdrill/postgres:15-local");
        assert_eq!(l.storage_flavor(), StorageFlavor::Pgdrill);
        let v18 = ImageChoice::choose(None, None, 18, Some("local")).unwrap();
        assert_eq!(v18.postgres, "pgdrill/postgres:18-local");
        let e = ImageChoice::choose(None, None, 17, Some("local")).unwrap_err();
        assert!(
            e.to_string().contains("PostgreSQL 15, 16 and 18 only"),
            "{e}"
        );
        let own = ImageChoice::choose(Some("my/pg:16"), None, 16, Some("local")).unwrap();
        assert_eq!(own.postgres, "my/pg:16");
        assert!(ImageChoice::choose(None, None, 15, Some("remote")).is_err());
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_reference("postgres:16"), ("postgres", "16"));
        assert_eq!(split_reference("minio/minio"), ("minio/minio", "latest"));
        assert_eq!(
            split_reference("registry:5000/pg"),
            ("registry:5000/pg", "latest")
        );
        assert_eq!(
            split_reference("registry:5000/pg:15"),
            ("registry:5000/pg", "15")
        );
    }
}
