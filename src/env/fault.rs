//! Faults the environments inject from outside the backup tool: damage to
//! stored WAL, shaping the storage's link with `tc`, and whether this host
//! can add delay at all.

use std::path::Path;

use super::EnvError;

/// How a WAL object is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// Deleted: a hole in the archive.
    Deleted,
    /// Bytes flipped in place: bit rot the checksum must catch.
    Corrupted,
}

/// Damages the stored object of WAL segment `segment` (a 24-digit file
/// name, whatever its compression) in the storage that the env directory
/// `settings` reaches (see [`super::Environment::storage_settings`]); returns its
/// key.
pub async fn damage_wal(
    settings: &Path,
    segment: &str,
    damage: Damage,
) -> Result<String, EnvError> {
    use crate::backup::{codec::Compression, layout, store};
    let settings = crate::backup::config::Settings::load(Some(settings))?;
    let store = store::open(&settings.storage)?;
    for compression in Compression::ALL {
        let key = layout::wal_key(segment, compression);
        if store.head(&key).await?.is_none() {
            continue;
        }
        match damage {
            Damage::Deleted => store.delete(&key).await?,
            Damage::Corrupted => {
                let mut bytes = store.get(&key, layout::MAX_WAL_OBJECT_SIZE).await?.to_vec();
                flip_bytes(&mut bytes);
                store.put(&key, bytes.into()).await?;
            }
        }
        return Ok(key.to_string());
    }
    Err(EnvError::Other(format!(
        "WAL segment {segment} is not in {}",
        store.describe()
    )))
}

/// Inverts 16 bytes in the middle of `bytes` (inside the payload, past
/// any header), as a disk or a copy gone wrong would.
fn flip_bytes(bytes: &mut [u8]) {
    let mid = bytes.len() / 2;
    let end = (mid + 16).min(bytes.len());
    for b in &mut bytes[mid..end] {
        *b = !*b;
    }
}

/// A limit on the storage's network link, applied with `tc` in the storage
/// container's network namespace (its egress: what restores download).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimit {
    /// Added one-way delay (the `netem` qdisc).
    pub delay: Option<std::time::Duration>,
    /// Bandwidth in kbit/s (an `htb` class).
    pub rate_kbit: Option<u64>,
}

impl LinkLimit {
    /// The `tc` argument lists that apply the limit to device `dev`,
    /// replacing any earlier one.
    pub fn tc_commands(&self, dev: &str) -> Vec<Vec<String>> {
        let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let netem = |parent: &str, d: std::time::Duration| {
            args(&format!(
                "qdisc replace dev {dev} {parent} netem delay {}us",
                d.as_micros()
            ))
        };
        match (self.delay, self.rate_kbit) {
            (delay, Some(rate)) => {
                let mut cmds = vec![
                    args(&format!(
                        "qdisc replace dev {dev} root handle 1: htb default 1"
                    )),
                    args(&format!(
                        "class replace dev {dev} parent 1: classid 1:1 htb rate {rate}kbit"
                    )),
                ];
                cmds.extend(delay.map(|d| netem("parent 1:1 handle 10:", d)));
                cmds
            }
            (Some(d), None) => vec![netem("root", d)],
            (None, None) => vec![args(&format!("qdisc del dev {dev} root"))],
        }
    }
}

impl std::fmt::Display for LinkLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(format!("delay {}", humantime::format_duration(d)));
        }
        if let Some(r) = self.rate_kbit {
            parts.push(format!("rate {r} kbit/s"));
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether this host can add delay with `tc netem`; `Err` says why not.
/// Tried in a throwaway network namespace (needs root).
pub fn netem_available() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args([
            "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .output()
        .map_err(|e| {
            format!("cannot try tc netem (unshare: {e}); it needs root, util-linux and iproute2")
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if said.contains("qdisc kind is unknown") {
        format!("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is off), so network delay cannot be injected here (tc: {said})")
    } else {
        format!("tc netem does not work here: {said}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flipping_changes_the_middle_and_survives_tiny_objects() {
        let mut b = vec![0u8; 100];
        flip_bytes(&mut b);
        assert_eq!(b.iter().filter(|&&x| x == 0xff).count(), 16);
        assert_eq!(b[50], 0xff);
        let mut tiny = vec![1u8];
        flip_bytes(&mut tiny);
        assert_eq!(tiny, [0xfe]);
    }

    #[test]
    fn tc_commands_shape_rate_with_htb_and_delay_with_netem() {
        let both = LinkLimit {
            delay: Some(Duration::from_millis(50)),
            rate_kbit: Some(20_000),
        };
        let cmds: Vec<String> = both
            .tc_commands("eth0")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "qdisc replace dev eth0 root handle 1: htb default 1",
                "class replace dev eth0 parent 1: classid 1:1 htb rate 20000kbit",
                "qdisc replace dev eth0 parent 1:1 handle 10: netem delay 50000us",
            ]
        );
        let delay = LinkLimit {
            delay: Some(Duration::from_millis(5)),
            rate_kbit: None,
        };
        assert_eq!(
            delay.tc_commands("eth0")[0].join(" "),
            "qdisc replace dev eth0 root netem delay 5000us"
        );
        assert_eq!(both.to_string(), "delay 50ms, rate 20000 kbit/s");
    }
}
