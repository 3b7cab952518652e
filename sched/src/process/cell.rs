//! The part of a process shared between its control block (in the shard's
//! table) and its [`Context`](crate::Context): the mailbox and the counters
//! that `process_info` reports.
//!
//! The table holds it type-erased as `Rc<dyn AnyCell>`; a typed send
//! downcasts it back to `ProcessCell<M>`, which checks that the message type
//! is the one the process was spawned with.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::mem;

use crate::exit::{Down, Exit, MonitorRef};
use crate::process::Envelope;

/// Mailbox and counters of a process whose messages are `M`.
pub(crate) struct ProcessCell<M> {
    pub(crate) mailbox: RefCell<VecDeque<Envelope<M>>>,
    pub(crate) reductions: Cell<u64>,
    pub(crate) arena_bytes: Cell<usize>,
    pub(crate) max_heap_bytes: Option<usize>,
}

/// A [`ProcessCell`] of any message type.
pub(crate) trait AnyCell {
    fn as_any(&self) -> &dyn Any;
    fn push_down(&self, down: Down);
    fn push_exit(&self, exit: Exit);
    /// Removes the `Down` of `monitor` from the mailbox, if it is there.
    fn flush_down(&self, monitor: MonitorRef);
    fn mailbox_len(&self) -> usize;
    fn mailbox_bytes(&self) -> usize;
    fn arena_bytes(&self) -> usize;
    fn reductions(&self) -> u64;
    /// Counts reductions charged through [`crate::coop`].
    fn add_reductions(&self, reductions: u64);
    /// Whether arena and mailbox together are over `max_heap_bytes`.
    fn over_heap_limit(&self) -> bool;
}

impl<M> ProcessCell<M> {
    pub(crate) fn new(max_heap_bytes: Option<usize>) -> ProcessCell<M> {
        ProcessCell {
            mailbox: RefCell::new(VecDeque::new()),
            reductions: Cell::new(0),
            arena_bytes: Cell::new(0),
            max_heap_bytes,
        }
    }

    pub(crate) fn push(&self, envelope: Envelope<M>) {
        self.mailbox.borrow_mut().push_back(envelope);
    }

    /// Appends `envelopes` in order; how many there were.
    pub(crate) fn push_all(&self, envelopes: impl Iterator<Item = Envelope<M>>) -> usize {
        let mut mailbox = self.mailbox.borrow_mut();
        let before = mailbox.len();
        mailbox.extend(envelopes);
        mailbox.len() - before
    }
}

impl<M: 'static> AnyCell for ProcessCell<M> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn push_down(&self, down: Down) {
        self.push(Envelope::Down(down));
    }

    fn push_exit(&self, exit: Exit) {
        self.push(Envelope::Exit(exit));
    }

    fn flush_down(&self, monitor: MonitorRef) {
        self.mailbox.borrow_mut().retain(
            |envelope| !matches!(envelope, Envelope::Down(down) if down.monitor == monitor),
        );
    }

    fn mailbox_len(&self) -> usize {
        self.mailbox.borrow().len()
    }

    fn mailbox_bytes(&self) -> usize {
        self.mailbox_len() * mem::size_of::<Envelope<M>>()
    }

    fn arena_bytes(&self) -> usize {
        self.arena_bytes.get()
    }

    fn reductions(&self) -> u64 {
        self.reductions.get()
    }

    fn add_reductions(&self, reductions: u64) {
        self.reductions.set(self.reductions.get() + reductions);
    }

    fn over_heap_limit(&self) -> bool {
        self.max_heap_bytes
            .is_some_and(|limit| self.mailbox_bytes() + self.arena_bytes() > limit)
    }
}
