//! The deterministic driver: inputs from seeds (mutated) and from nothing
//! (random bytes), every case checked for panics, errors the reader's
//! check rejects, allocation and time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::alloc;

/// The readers run one at a time: the allocator's record is global.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Cases per reader.
pub fn cases() -> usize {
    std::env::var("PGDRILL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(super::DEFAULT_CASES)
}

/// What a check makes of one input: fine, or what is wrong.
pub type Verdict = Result<(), String>;

/// Runs `check` on [`cases`] inputs: a quarter random bytes, the rest
/// mutations of `seeds` (made by `mutate`, or [`mutate_bytes`]).
pub fn run(
    reader: &str,
    seeds: &[Vec<u8>],
    mutate: impl Fn(&mut StdRng, &[u8]) -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> Verdict,
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Every seed itself must pass: otherwise the check cannot tell.
    for (i, seed) in seeds.iter().enumerate() {
        if let Err(e) = check(seed) {
            panic!("{reader}: valid seed {i} rejected: {e}");
        }
    }
    let base: u64 = std::env::var("PGDRILL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(base ^ fnv(reader));
    let total = cases();
    let started = Instant::now();
    for case in 0..total {
        let input = if seeds.is_empty() || case % 4 == 0 {
            let len = rng.random_range(0..2048);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, seed)
        };
        watchdog().start(reader, case);
        alloc::arm();
        let clock = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let largest = alloc::disarm();
        let took = clock.elapsed();
        watchdog().stop();
        let problem = match outcome {
            Err(panic) => Some(format!("panicked: {}", panic_text(&panic))),
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) if largest > alloc::LIMIT => Some(format!(
                "allocated {largest} bytes at once (limit {})",
                alloc::LIMIT
            )),
            Ok(Ok(())) if took > super::CASE_TIME => Some(format!("took {took:?}")),
            Ok(Ok(())) => None,
        };
        if let Some(problem) = problem {
            let saved = save(reader, case, &input);
            panic!(
                "{reader}: case {case} ({} bytes, saved to {}): {problem}",
                input.len(),
                saved.display()
            );
        }
    }
    eprintln!(
        "hostile {reader}: {total} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn save(reader: &str, case: usize, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{reader}-{case}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// FNV-1a, for a stable seed per reader name.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Integers that break length arithmetic.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    4 << 30,
    i64::MAX as u64,
    u64::MAX,
];

/// One to three byte-level mutations: bit flips, interesting integers
/// written over a length field, truncation, appended garbage, a chunk
/// duplicated or removed.
pub fn mutate_bytes(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let len = v.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let i = rng.random_range(0..len);
                    v[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 if len >= 8 => {
                let i = rng.random_range(0..=len - 8);
                let x = INTERESTING[rng.random_range(0..INTERESTING.len())];
                match rng.random_range(0..3) {
                    0 => v[i..i + 8].copy_from_slice(&x.to_le_bytes()),
                    1 => v[i..i + 4].copy_from_slice(&(x as u32).to_le_bytes()),
                    _ => v[i..i + 4].copy_from_slice(&(x as u32).to_be_bytes()),
                }
            }
            2 if len > 0 => v.truncate(rng.random_range(0..len)),
            3 => {
                let n = rng.random_range(1..512);
                v.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 4096));
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=len);
                v.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len);
                v.drain(a..b);
            }
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'/', b'.'][rng.random_range(0..6)];
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

/// Values that break JSON readers: wrong types, huge and negative
/// numbers, paths that escape, NUL, very long strings.
fn hostile_value(rng: &mut StdRng) -> serde_json::Value {
    use serde_json::json;
    match rng.random_range(0..12) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1e308),
        4 => json!("../../../../etc/passwd"),
        5 => json!("/etc/passwd"),
        6 => json!("a\u{0}b"),
        7 => json!("x".repeat(100_000)),
        8 => json!([]),
        9 => json!({}),
        10 => json!(""),
        _ => json!(".."),
    }
}

/// A JSON mutation: a random value somewhere replaced by a hostile one,
/// or a key removed; invalid JSON seeds get byte mutations.
pub fn mutate_json(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(seed) else {
        return mutate_bytes(rng, seed);
    };
    if rng.random_range(0..4) == 0 {
        return mutate_bytes(rng, seed);
    }
    for _ in 0..rng.random_range(1..=2) {
        let mut at = &mut doc;
        // Walk down a random path.
        loop {
            let next = match at {
                serde_json::Value::Object(m) if !m.is_empty() && rng.random_range(0..3) > 0 => {
                    let k = m.keys().nth(rng.random_range(0..m.len())).cloned();
                    k.map(|k| (Some(k), None))
                }
                serde_json::Value::Array(a) if !a.is_empty() && rng.random_range(0..3) > 0 => {
                    Some((None, Some(rng.random_range(0..a.len()))))
                }
                _ => None,
            };
            match next {
                Some((Some(k), _)) => {
                    if rng.random_range(0..8) == 0 {
                        at.as_object_mut().expect("an object").remove(&k);
                        break;
                    }
                    at = at.get_mut(&k).expect("the key");
                }
                Some((None, Some(i))) => at = at.get_mut(i).expect("the index"),
                _ => {
                    *at = hostile_value(rng);
                    break;
                }
            }
        }
    }
    serde_json::to_vec(&doc).expect("JSON serializes")
}

/// Aborts the binary when a case runs past [`super::CASE_TIME`] (a hang
/// cannot be caught any other way).
pub struct Watchdog {
    started_ms: AtomicU64,
    what: Mutex<String>,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub fn watchdog() -> &'static Watchdog {
    static DOG: OnceLock<&'static Watchdog> = OnceLock::new();
    DOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            started_ms: AtomicU64::new(0),
            what: Mutex::new(String::new()),
        }));
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let started = dog.started_ms.load(Ordering::Relaxed);
            if started != 0 && now_ms() - started > super::CASE_TIME.as_millis() as u64 {
                eprintln!(
                    "hostile: {} hangs (over {:?}); aborting",
                    dog.what.lock().unwrap_or_else(|e| e.into_inner()),
                    super::CASE_TIME
                );
                std::process::abort();
            }
        });
        dog
    })
}

impl Watchdog {
    fn start(&self, reader: &str, case: usize) {
        *self.what.lock().unwrap_or_else(|e| e.into_inner()) = format!("{reader} case {case}");
        self.started_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn stop(&self) {
        self.started_ms.store(0, Ordering::Relaxed);
    }
}
