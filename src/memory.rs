//! How rsgo takes memory from the system, on glibc (Debian, Ubuntu, and rsgo's image).
//!
//! glibc gives every thread that meets contention its own malloc arena (up to 8 per core), and
//! memory freed into one arena is not reused by another, so rsgo limits itself to two arenas
//! (a `MALLOC_ARENA_MAX` set by the operator wins). And glibc hands freed memory back to the
//! system only from the top of an arena: after a burst of requests the freed chunks lie
//! between live ones, and `scripts/bench.sh memory` found two thirds of the arenas free but
//! still resident (77 MiB resident, 25 MiB in use). [`return_freed_memory`] asks glibc to hand
//! back every free page once the process goes quiet after a stretch of work.

use std::time::Duration;

/// How often the process's CPU time is looked at.
const TICK: Duration = Duration::from_secs(1);
/// A tick that used less than this much CPU is a quiet one.
const QUIET: Duration = Duration::from_millis(20);
/// CPU time used since memory was last returned that makes it worth returning again: a burst
/// of requests or a rollout, or a few resync passes, not a lone timer.
const WORK: Duration = Duration::from_millis(250);

/// Limits glibc to two malloc arenas unless the operator set `MALLOC_ARENA_MAX`. Two measured
/// best for rsgo: about 10 MiB less at rest and after bursts than glibc's default, and less
/// than jemalloc or mimalloc. Call it before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tuning parameter; the caller runs it before
        // other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Limits glibc's malloc arenas; other allocators have none.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() {}

/// Whether free memory should be handed back now: the last tick was quiet and enough work was
/// done since the last time to have left freed memory behind.
fn due(worked_since_return: Duration, last_tick: Duration) -> bool {
    worked_since_return >= WORK && last_tick < QUIET
}

/// CPU time (user and system) the process has used.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Hands every whole free page of every arena back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_free_pages() {
    // SAFETY: malloc_trim takes each arena's lock itself and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs for as long as it is polled: each time the process goes quiet (a second with less
/// than 2 % of a core) after at least a quarter second of CPU since the last time, hands the
/// memory freed meanwhile back to the system. A steady resync loop comes to that once every
/// few passes; a process under constant load never does, and keeps reusing what it freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub async fn return_freed_memory() {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut returned_at = process_cpu();
    let mut last = returned_at;
    loop {
        ticks.tick().await;
        let now = process_cpu();
        let last_tick = now.saturating_sub(last);
        last = now;
        if due(now.saturating_sub(returned_at), last_tick) {
            let started = std::time::Instant::now();
            if tokio::task::spawn_blocking(return_free_pages)
                .await
                .is_err()
            {
                return;
            }
            tracing::debug!(elapsed = ?started.elapsed(), "returned freed memory to the system");
            returned_at = process_cpu();
            last = returned_at;
        }
    }
}

/// Other allocators return memory their own way.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub async fn return_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_returned_on_the_first_quiet_tick_after_enough_work() {
        let ms = Duration::from_millis;
        assert!(due(ms(300), ms(5)), "worked, then quiet");
        assert!(!due(ms(300), ms(400)), "still working");
        assert!(!due(ms(100), ms(0)), "too little work to have freed much");
        assert!(
            !due(ms(250), QUIET),
            "a tick at the quiet limit is not quiet"
        );
    }

    /// Reads this process's resident memory, in bytes.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kib * 1024
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_between_live_blocks_goes_back_to_the_system() {
        // 64 MiB in 4 KiB blocks, touched; then every block but one in sixteen freed, so the
        // free memory lies between live blocks where glibc keeps it.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let mut index = 0;
        blocks.retain(|_| {
            index += 1;
            index % 16 == 0
        });
        let before = resident();
        return_free_pages();
        let after = resident();
        assert!(
            before.saturating_sub(after) > 32 << 20,
            "at least half of the 60 MiB freed goes back: {before} -> {after} bytes resident"
        );
        assert_eq!(blocks.len(), 1024, "the live blocks stay");
    }
}
