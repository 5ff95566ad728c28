//! glibc's heap, set up for the byte path.
//!
//! yamux copies every write into a new `Vec` (up to 64 KiB) and frees it once
//! the frame is sent. With glibc's default `M_TRIM_THRESHOLD` (128 KiB) such a
//! block, freed at the top of the heap, goes straight back to the kernel, and
//! the next write faults it in again, page by page: about 48 000 page faults
//! a second in the agent during a bulk upload (`perf record -e page-faults`),
//! a fifth of its CPU. Keeping up to 1 MiB free at the top of the heap ends
//! that churn for at most 1 MiB of memory (measured: tunnel CPU per GB 1.45–1.74
//! → 1.03–1.21 s uploading, RSS unchanged; BENCHMARKS.md).

/// Free bytes glibc keeps at the top of the heap before returning them.
pub const TRIM_THRESHOLD: usize = 1024 * 1024;

/// Applies [`TRIM_THRESHOLD`]. Call once, first thing in `main`. Returns
/// whether the C library took it (false where it is not glibc).
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a malloc parameter; it takes plain integers
    // and is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_trim_threshold() {
        assert!(super::tune());
    }
}
