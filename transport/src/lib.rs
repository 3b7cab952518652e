//! Foundation's transport: bytes between nodes.
//!
//! This crate holds the io_uring and epoll backends, the rkyv frame format,
//! the handshake and the prioritized named channels described in the
//! architecture (`DESIGN.md`, section *transport*). So far it has the
//! [`frame`] format: a fixed little-endian header and an rkyv payload,
//! validated before anything reads it. Backends, connections and channels
//! follow.
//!
//! The runtime side of the seam it will plug into already exists:
//! [`foundation_sched::driver::Driver`] is the trait an io_uring or epoll
//! driver implements so that a shard's idle park waits on I/O completions and
//! cross-shard wake-ups at once.

#![forbid(unsafe_code)]

pub mod frame;
