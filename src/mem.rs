//! Buffers for the few large allocations chromaprod makes (a chunk, a
//! compressed object, a request or response body), kept out of glibc's
//! per-thread arenas so that freeing them returns the memory.

/// Buffers this large or larger are reserved with [`large_buffer`].
pub const LARGE_BUFFER_FROM: usize = 1024 * 1024;

/// An empty buffer with room for at least `bytes`, reserved beyond glibc's
/// largest mmap threshold (32 MiB on 64-bit).
///
/// glibc's malloc raises its mmap threshold to the size of each mmapped
/// block that is freed (up to 32 MiB); from then on, blocks below it come
/// from per-thread arenas, which keep freed memory instead of returning it.
/// A backup frees a chunk-sized buffer every few MiB, so its resident
/// memory drifted up with the run although what was live stayed bounded.
/// A reservation above 32 MiB is always mmapped and unmapped on free, and
/// never moves the threshold; it costs address space only, since pages
/// become resident when they are written. Other allocators are unaffected.
pub fn large_buffer(bytes: usize) -> Vec<u8> {
    Vec::with_capacity(bytes.max(33 * 1024 * 1024))
}

/// An empty buffer for about `bytes`: a [`large_buffer`] from
/// [`LARGE_BUFFER_FROM`] on, an exact reservation below.
pub fn buffer_for(bytes: usize) -> Vec<u8> {
    if bytes >= LARGE_BUFFER_FROM {
        large_buffer(bytes)
    } else {
        Vec::with_capacity(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reserved_past_the_largest_mmap_threshold() {
        assert!(large_buffer(10).capacity() > 32 * 1024 * 1024);
        assert!(large_buffer(40 << 20).capacity() >= 40 << 20);
        assert!(buffer_for(LARGE_BUFFER_FROM).capacity() > 32 * 1024 * 1024);
        assert_eq!(buffer_for(1000).capacity(), 1000);
    }
}
