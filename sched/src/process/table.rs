//! A shard's process table: slots addressed by the slot field of a pid.
//!
//! Freed slots are reused most-recently-freed first (their memory is warm),
//! each time with the next generation, so the pid of a dead process never
//! matches its slot's new occupant. A slot whose generation is used up is
//! retired for good rather than wrapped.

use crate::pid::Pid;

/// Slots of one shard, each empty or holding a `T`.
pub(crate) struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

struct Slot<T> {
    generation: u16,
    value: Option<T>,
}

/// The table is full: every slot a pid can name is in use or retired.
#[derive(Debug)]
pub(crate) struct TableFull;

impl<T> Table<T> {
    pub(crate) fn new() -> Table<T> {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Number of occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Reserves a slot and returns its (slot, generation); `fill` then puts
    /// the value in. Splitting the two lets the caller build the pid first.
    pub(crate) fn vacant(&mut self) -> Result<(u32, u16), TableFull> {
        if let Some(&slot) = self.free.last() {
            return Ok((slot, self.slots[slot as usize].generation));
        }
        let slot = u32::try_from(self.slots.len()).map_err(|_| TableFull)?;
        if slot >= Pid::MAX_SLOTS {
            return Err(TableFull);
        }
        self.slots.push(Slot {
            generation: 0,
            value: None,
        });
        self.free.push(slot);
        Ok((slot, 0))
    }

    /// Fills the slot `vacant` returned last.
    pub(crate) fn fill(&mut self, slot: u32, value: T) {
        let popped = self.free.pop();
        debug_assert_eq!(popped, Some(slot));
        let entry = &mut self.slots[slot as usize];
        debug_assert!(entry.value.is_none());
        entry.value = Some(value);
        self.live += 1;
    }

    /// The value in `slot` if its generation is `generation`.
    pub(crate) fn get(&self, slot: u32, generation: u16) -> Option<&T> {
        let entry = self.slots.get(slot as usize)?;
        if entry.generation == generation {
            entry.value.as_ref()
        } else {
            None
        }
    }

    /// The value in `slot` if its generation is `generation`.
    pub(crate) fn get_mut(&mut self, slot: u32, generation: u16) -> Option<&mut T> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.generation == generation {
            entry.value.as_mut()
        } else {
            None
        }
    }

    /// The value in `slot`, whatever its generation.
    pub(crate) fn get_slot_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.value.as_mut()
    }

    /// Empties `slot` if its generation is `generation`, and moves the slot
    /// on to its next generation (or retires it).
    pub(crate) fn remove(&mut self, slot: u32, generation: u16) -> Option<T> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.generation != generation {
            return None;
        }
        let value = entry.value.take()?;
        self.live -= 1;
        if entry.generation < Pid::MAX_GENERATION {
            entry.generation += 1;
            self.free.push(slot);
        }
        Some(value)
    }

    /// Every occupied (slot, generation), for walking the table while
    /// changing it.
    pub(crate) fn occupied(&self) -> Vec<(u32, u16)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.value.is_some())
            .map(|(index, slot)| (index as u32, slot.generation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(table: &mut Table<&'static str>, value: &'static str) -> (u32, u16) {
        let (slot, generation) = table.vacant().unwrap();
        table.fill(slot, value);
        (slot, generation)
    }

    #[test]
    fn a_reused_slot_refuses_the_old_generation() {
        let mut table = Table::new();
        let (slot, old) = insert(&mut table, "first");
        assert_eq!(table.remove(slot, old), Some("first"));
        let (again, new) = insert(&mut table, "second");
        assert_eq!(again, slot);
        assert_ne!(old, new);
        assert_eq!(table.get(slot, old), None);
        assert_eq!(table.remove(slot, old), None);
        assert_eq!(table.get(slot, new), Some(&"second"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn an_exhausted_slot_is_retired() {
        let mut table = Table::new();
        let (slot, _) = insert(&mut table, "x");
        table.slots[slot as usize].generation = Pid::MAX_GENERATION;
        assert!(table.remove(slot, Pid::MAX_GENERATION).is_some());
        let (next, generation) = insert(&mut table, "y");
        assert_ne!(next, slot, "a retired slot must not come back");
        assert_eq!(generation, 0);
    }
}
