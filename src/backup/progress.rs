//! Progress lines on stderr for long work (bytes, rate), plain text so they
//! read well in a terminal and in a CronJob's log alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A byte counter that a background task reports every few seconds.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    total: u64,
    started: Instant,
}

impl Progress {
    /// Starts reporting `what` on stderr every `every` until the returned
    /// guard is dropped.
    pub fn start(
        what: &'static str,
        total: u64,
        every: Duration,
    ) -> (Arc<Progress>, ProgressGuard) {
        let p = Arc::new(Progress {
            done: AtomicU64::new(0),
            total,
            started: Instant::now(),
        });
        let reporter = Arc::clone(&p);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{what}: {}", reporter.line());
            }
        });
        (p, ProgressGuard(task))
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes per second since the start.
    pub fn rate(&self) -> f64 {
        self.done() as f64 / self.started.elapsed().as_secs_f64().max(1e-6)
    }

    pub fn line(&self) -> String {
        let done = self.done();
        let pct = if self.total > 0 {
            format!(" ({:.0}%)", 100.0 * done as f64 / self.total as f64)
        } else {
            String::new()
        };
        format!(
            "{} of {}{pct}, {}/s, {:.0}s elapsed",
            human_bytes(done),
            human_bytes(self.total),
            human_bytes(self.rate() as u64),
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// Stops the reporter when dropped.
pub struct ProgressGuard(tokio::task::JoinHandle<()>);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_units() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
