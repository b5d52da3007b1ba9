//! How rsgo takes memory from the system: jemalloc, set up at build time for a long-running
//! server on few cores.
//!
//! rsgo used glibc's allocator first. Its cost per request grew with the heap's history: with
//! 10,000 stacks loaded, the free chunks left between live objects made every allocation that
//! missed glibc's small caches walk longer bins, and `scripts/bench.sh hooks` measured the hook
//! paths 1.2-2× slower at p50 than with 10 stacks (a profile put the difference in
//! `_int_malloc` and its bin upkeep). glibc also only hands back memory from the top of an
//! arena, so rsgo had to ask it to trim once quiet. jemalloc serves each size class from its
//! own slabs, so an allocation costs the same however fragmented the heap is, and it returns
//! unused pages itself. See the README's performance section for the figures.
//!
//! The settings below are jemalloc's own; an operator can override any of them with the
//! `_RJEM_MALLOC_CONF` environment variable (the name jemalloc reads when embedded in a Rust
//! program), for example `_RJEM_MALLOC_CONF=dirty_decay_ms:10000`.

/// The allocator of every rsgo process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once when it starts:
/// - `narenas:2`: two arenas, not four per core: memory freed in one arena is not reused by
///   another, and on two cores more arenas measured more memory and no more speed;
/// - `background_thread:true`: a thread of jemalloc's own returns unused pages, so a quiet
///   server gives memory back without needing an allocation to drive it;
/// - `dirty_decay_ms:1000` and `muzzy_decay_ms:0`: pages unused for about a second go back to
///   the system at once (jemalloc's defaults keep them 10 s, then hold them lazily freed).
// jemalloc reads a C string through this pointer; the name is the one its embedding expects.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Reads this process's resident memory, in bytes.
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kib * 1024
    }

    #[test]
    fn freed_memory_between_live_blocks_goes_back_to_the_system_without_more_allocations() {
        // 64 MiB in 4 KiB blocks, touched; then every block but one in sixteen freed, so the
        // free memory lies between live blocks.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let before = resident();
        let mut index = 0;
        blocks.retain(|_| {
            index += 1;
            index % 16 == 0
        });
        blocks.shrink_to_fit();
        // This thread allocates nothing more: jemalloc's background thread has to do it.
        let start = Instant::now();
        let mut after = resident();
        while before.saturating_sub(after) <= 32 << 20 && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(200));
            after = resident();
        }
        assert!(
            before.saturating_sub(after) > 32 << 20,
            "at least half of the 60 MiB freed goes back within 20 s: {before} -> {after} bytes \
             resident"
        );
        assert_eq!(blocks.len(), 1024, "the live blocks stay");
        assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 1)));
    }
}
