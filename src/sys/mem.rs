//! Giving freed memory back to the operating system.

/// Returns the heap's free pages to the kernel (glibc `malloc_trim`). After thousands of
/// sessions go away their memory is free but stays mapped in the allocator's arenas; an
/// operator watching RSS should see it come back.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Large allocations (maps of thousands of peers, their rebuilt copies) get their own mappings,
/// returned to the kernel as soon as they are freed. glibc otherwise raises its mmap threshold
/// after the first such free (up to 32 MiB) and later large blocks land in the heap, where
/// they stay resident and fragment it. Threshold: 64 KiB (glibc's default starts at 128 KiB).
pub fn map_large_allocations_separately() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}
