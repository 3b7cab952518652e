//! Foundation's transport: bytes between nodes.
//!
//! This crate will hold the io_uring and epoll backends, the rkyv frame
//! format, the handshake and the prioritized named channels described in the
//! architecture (`DESIGN.md`, section *transport*). None of that exists yet:
//! it is the subject of the transport issue. Until then the crate is empty on
//! purpose, so that the dependency direction `engine → transport → sched`
//! is fixed from the first commit.
//!
//! The runtime side of the seam it will plug into already exists:
//! [`foundation_sched::driver::Driver`] is the trait an io_uring or epoll
//! driver implements so that a shard's idle park waits on I/O completions and
//! cross-shard wake-ups at once.

#![forbid(unsafe_code)]
