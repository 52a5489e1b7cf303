//! The kernel edge.
