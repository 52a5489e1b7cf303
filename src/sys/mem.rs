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
