//! The shard's hierarchical timer wheel.
//!
//! Each shard owns one `TimerWheel` and drives it from its own loop: before
//! parking it asks `TimerWheel::next_deadline` how long it may sleep, and
//! after waking it calls `TimerWheel::advance` with the clock reading to
//! collect the timers that came due (receive timeouts, `sleep`, restart
//! backoff). Because the wheel belongs to one shard it needs no locks or
//! atomics, and because time is only what the caller passes in (nanoseconds on
//! the runtime's monotonic clock), the simulator drives it exactly as the real
//! clock does.
//!
//! # Resolution: 1 ms, never early
//!
//! A deadline is rounded *up* to a whole millisecond, a *tick*, and the timer
//! fires at the first `advance` whose `now` has reached that tick. A timer
//! therefore never fires before its deadline, and at most 1 ms after it (plus
//! however late the shard calls `advance`). Timers that fall in the same tick
//! fire together, in insertion order; finer order inside a tick is not kept.
//! A deadline already in the past fires on the next `advance`. A deadline so
//! close to `u64::MAX` nanoseconds that its rounded-up tick cannot be reached
//! by any `now` never fires.
//!
//! # Layout
//!
//! As in tokio's `runtime/time/wheel`: six levels of 64 slots. A slot at
//! level `n` spans `64^n` ms, so level `n` as a whole spans `64^(n+1)` ms:
//!
//! | level | slot width  | level span  |
//! |-------|-------------|-------------|
//! | 0     | 1 ms        | 64 ms       |
//! | 1     | 64 ms       | ~4.1 s      |
//! | 2     | ~4.1 s      | ~4.4 min    |
//! | 3     | ~4.4 min    | ~4.7 h      |
//! | 4     | ~4.7 h      | ~12.4 days  |
//! | 5     | ~12.4 days  | ~2.2 years  |
//!
//! A timer sits at the level of the highest base-64 digit in which its tick
//! differs from the current tick, in the slot named by its own digit there.
//! When time reaches the start of that slot the timer *cascades*: it is placed
//! again, now at a finer level, until it is due. Each timer moves at most five
//! times. Deadlines beyond the wheel's span are clamped to the top level: they
//! wait there in the slot of their top digit and are placed again each time
//! that slot comes round (every ~2.2 years) until they are due, so they too
//! never fire early.
//!
//! # Costs
//!
//! - `insert` and `cancel` are O(1): a timer lives in a slab entry that is
//!   also a node of its slot's doubly linked list, and its `TimerKey` names
//!   that entry, so cancelling unlinks it directly.
//! - `next_deadline` is O(1): each level keeps a 64-bit occupancy bitmap, and
//!   finding the next occupied slot is a rotate and a trailing-zero count per
//!   level.
//! - `advance` costs O(occupied slots passed + timers moved or fired), however
//!   much time passed: empty slots are skipped via the bitmaps.
//!
//! # Memory
//!
//! The slot table (384 list heads, about 3 KiB) lives inline in the wheel;
//! nothing is allocated per slot. Timers live in one `Vec` of entries (40
//! bytes for a `u64` value) whose vacant entries form a free list, so the
//! wheel reuses memory rather than allocating per timer. A key carries its
//! entry's generation, bumped whenever the entry is released, so a stale key
//! (fired or cancelled) matches nothing even after the entry is reused; it
//! could only alias after 2^32 reuses of the same entry.
#![cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the shard does not call every method of the wheel yet"
    )
)]

use std::mem;

/// Identifies one armed timer; stale keys (fired or cancelled) are detected
/// by a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimerKey {
    /// Position of the timer's entry in the slab.
    index: u32,
    /// Generation of that entry when the timer was armed.
    generation: u32,
}

/// A shard's armed timers, each holding a value of type `T` until its
/// deadline passes.
pub(crate) struct TimerWheel<T> {
    /// The current tick: every timer due at or before it has fired, except
    /// timers inserted already due, which wait in the current level-0 slot
    /// for the next `advance`.
    elapsed: u64,
    /// The six levels, finest first.
    levels: [Level; LEVELS],
    /// Slab of timers, armed or vacant; keys and list links index into it.
    entries: Vec<Entry<T>>,
    /// First vacant entry, or [`NIL`] when every entry is armed.
    free_head: u32,
    /// Number of armed timers.
    len: usize,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose time is `now_nanos`, in nanoseconds on
    /// the runtime's monotonic clock. Resolution is 1 ms: a timer fires at
    /// the first advance whose `now` is >= its deadline rounded UP to the
    /// next millisecond (never early).
    pub(crate) fn new(now_nanos: u64) -> Self {
        Self {
            elapsed: now_nanos / NANOS_PER_MS,
            levels: [Level::EMPTY; LEVELS],
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
        }
    }

    /// Arms a timer that yields `value` once `deadline_nanos` has passed. A
    /// deadline in the past fires on the next [`advance`](Self::advance).
    ///
    /// # Panics
    ///
    /// If `u32::MAX` timers are already armed.
    pub(crate) fn insert(&mut self, deadline_nanos: u64, value: T) -> TimerKey {
        let tick = deadline_nanos.div_ceil(NANOS_PER_MS).max(self.elapsed);
        let key = self.allocate(tick, value);
        self.link(key.index);
        self.len += 1;
        key
    }

    /// Disarms the timer and returns its value, or `None` if it already
    /// fired, was cancelled, or the key is stale.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if !self.contains(key) {
            return None;
        }
        self.unlink(key.index);
        self.len -= 1;
        Some(self.release(key.index))
    }

    /// Whether the timer named by `key` is still armed.
    pub(crate) fn contains(&self, key: TimerKey) -> bool {
        matches!(
            self.entries.get(key.index as usize),
            Some(Entry::Armed(armed)) if armed.generation == key.generation
        )
    }

    /// The earliest instant (nanos) at which some armed timer could fire, for
    /// choosing how long to park. May be earlier than the true next deadline
    /// (e.g. a cascade point) but never later. None when empty.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.next_expiration()
            .map(|expiration| expiration.tick.saturating_mul(NANOS_PER_MS))
    }

    /// Moves time forward to `now_nanos` and appends the values of every timer
    /// whose deadline, rounded up to the millisecond, is <= now to `fired`, in
    /// deadline order (ties in insertion order). Time never goes backward: an
    /// earlier `now` is treated as the current time, so timers inserted
    /// already due still fire.
    pub(crate) fn advance(&mut self, now_nanos: u64, fired: &mut Vec<T>) {
        let now = (now_nanos / NANOS_PER_MS).max(self.elapsed);
        while let Some(expiration) = self.next_expiration().filter(|e| e.tick <= now) {
            self.elapsed = expiration.tick;
            self.expire(expiration, fired);
        }
        self.elapsed = now;
    }

    /// Number of armed timers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next slot to process: the first occupied slot of the finest
    /// non-empty level. A finer level's slots all start before any coarser
    /// level's next slot, so the finest level holds the earliest one.
    fn next_expiration(&self) -> Option<Expiration> {
        self.levels
            .iter()
            .enumerate()
            .find_map(|(level, ring)| ring.next_expiration(level, self.elapsed))
    }

    /// Empties the slot `expiration` names, with `elapsed` at its start:
    /// fires the timers now due and places the others again, finer.
    fn expire(&mut self, expiration: Expiration, fired: &mut Vec<T>) {
        let mut index = self.levels[expiration.level].take(expiration.slot).head;
        while index != NIL {
            let armed = self.armed_mut(index);
            let (next, tick) = (armed.next, armed.tick);
            if tick <= self.elapsed {
                self.len -= 1;
                fired.push(self.release(index));
            } else {
                self.link(index);
            }
            index = next;
        }
    }

    /// Stores a new armed entry, reusing a vacant one if there is any.
    fn allocate(&mut self, tick: u64, value: T) -> TimerKey {
        let armed = |generation| {
            Entry::Armed(Armed {
                generation,
                tick,
                level: 0,
                prev: NIL,
                next: NIL,
                value,
            })
        };
        if self.free_head == NIL {
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&index| index != NIL)
                .expect("a shard arms fewer than u32::MAX timers");
            self.entries.push(armed(0));
            TimerKey {
                index,
                generation: 0,
            }
        } else {
            let index = self.free_head;
            let Entry::Vacant {
                generation,
                next_free,
            } = self.entries[index as usize]
            else {
                unreachable!("the free list links only vacant entries");
            };
            self.free_head = next_free;
            self.entries[index as usize] = armed(generation);
            TimerKey { index, generation }
        }
    }

    /// Makes the entry at `index` vacant, bumping its generation so its key
    /// goes stale, and returns the timer's value. The entry must be unlinked.
    fn release(&mut self, index: u32) -> T {
        let generation = self.armed_mut(index).generation.wrapping_add(1);
        let vacant = Entry::Vacant {
            generation,
            next_free: self.free_head,
        };
        let Entry::Armed(armed) = mem::replace(&mut self.entries[index as usize], vacant) else {
            unreachable!("only armed entries are released");
        };
        self.free_head = index;
        armed.value
    }

    /// Appends the entry at `index` to the slot its tick belongs in at the
    /// current time.
    fn link(&mut self, index: u32) {
        let tick = self.armed_mut(index).tick;
        let level = level_for(self.elapsed, tick);
        let slot = slot_for(tick, level);
        let ring = &mut self.levels[level];
        let tail = mem::replace(&mut ring.slots[slot].tail, index);
        if tail == NIL {
            ring.slots[slot].head = index;
            ring.occupied |= 1 << slot;
        } else {
            self.armed_mut(tail).next = index;
        }
        let armed = self.armed_mut(index);
        armed.level = level as u8;
        armed.prev = tail;
        armed.next = NIL;
    }

    /// Removes the entry at `index` from its slot's list.
    fn unlink(&mut self, index: u32) {
        let armed = self.armed_mut(index);
        let (level, prev, next) = (usize::from(armed.level), armed.prev, armed.next);
        let slot = slot_for(armed.tick, level);
        if prev == NIL {
            self.levels[level].slots[slot].head = next;
        } else {
            self.armed_mut(prev).next = next;
        }
        if next == NIL {
            self.levels[level].slots[slot].tail = prev;
        } else {
            self.armed_mut(next).prev = prev;
        }
        if prev == NIL && next == NIL {
            self.levels[level].occupied &= !(1 << slot);
        }
    }

    /// The armed entry at `index`, which list links and keys checked by
    /// [`contains`](Self::contains) always name.
    fn armed_mut(&mut self, index: u32) -> &mut Armed<T> {
        match &mut self.entries[index as usize] {
            Entry::Armed(armed) => armed,
            Entry::Vacant { .. } => unreachable!("lists link only armed entries"),
        }
    }
}

/// Nanoseconds per tick: the wheel's resolution is 1 ms.
const NANOS_PER_MS: u64 = 1_000_000;

/// Number of levels in the wheel.
const LEVELS: usize = 6;

/// Number of slots per level; one base-64 digit of a tick picks the slot.
const SLOTS: usize = 64;

/// Bits in one base-64 digit of a tick.
const DIGIT_BITS: usize = 6;

/// Ticks spanned by the whole wheel: 64^6 ms, about 2.2 years.
const WHEEL_SPAN: u64 = 1 << (DIGIT_BITS * LEVELS);

/// The "no entry" index that ends lists and the free list.
const NIL: u32 = u32::MAX;

/// One ring of slots, with a bitmap of which slots hold timers.
struct Level {
    /// Bit `i` is set exactly when `slots[i]` is non-empty.
    occupied: u64,
    /// Each slot's list of timers, in the order they were linked.
    slots: [SlotList; SLOTS],
}

impl Level {
    /// A level with no timers.
    const EMPTY: Self = Self {
        occupied: 0,
        slots: [SlotList::EMPTY; SLOTS],
    };

    /// The first occupied slot at or after the current time at this level,
    /// and the tick at which it starts.
    fn next_expiration(&self, level: usize, elapsed: u64) -> Option<Expiration> {
        if self.occupied == 0 {
            return None;
        }
        let width = slot_width(level);
        let span = width * SLOTS as u64;
        let current = slot_for(elapsed, level) as u32;
        let slot =
            (self.occupied.rotate_right(current).trailing_zeros() + current) as usize % SLOTS;
        let mut tick = (elapsed & !(span - 1)) + slot as u64 * width;
        if level == LEVELS - 1 && tick <= elapsed {
            // Only deadlines beyond the wheel's span sit at or behind the
            // current top slot; they belong to the next rotation.
            tick += span;
        }
        debug_assert!(tick >= elapsed, "a slot behind the current time was missed");
        Some(Expiration { level, slot, tick })
    }

    /// Empties `slot` and returns the list it held.
    fn take(&mut self, slot: usize) -> SlotList {
        self.occupied &= !(1 << slot);
        mem::replace(&mut self.slots[slot], SlotList::EMPTY)
    }
}

/// A slot's doubly linked list of timers, threaded through the entries.
#[derive(Clone, Copy)]
struct SlotList {
    /// First entry, or [`NIL`].
    head: u32,
    /// Last entry, or [`NIL`].
    tail: u32,
}

impl SlotList {
    /// The list of no timers.
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
    };
}

/// One slab entry.
enum Entry<T> {
    /// Holds an armed timer.
    Armed(Armed<T>),
    /// Free for reuse.
    Vacant {
        /// Generation the next timer stored here gets.
        generation: u32,
        /// Next vacant entry, or [`NIL`].
        next_free: u32,
    },
}

/// An armed timer and its place in a slot's list.
struct Armed<T> {
    /// Generation of the entry, matched against keys.
    generation: u32,
    /// The tick at which the timer is due.
    tick: u64,
    /// The level whose slot lists the timer; the slot is its tick's digit
    /// there.
    level: u8,
    /// Previous entry in the slot's list, or [`NIL`].
    prev: u32,
    /// Next entry in the slot's list, or [`NIL`].
    next: u32,
    /// What the timer yields when it fires.
    value: T,
}

/// A slot due to be processed.
#[derive(Clone, Copy, Debug)]
struct Expiration {
    /// The slot's level.
    level: usize,
    /// The slot's index in its level.
    slot: usize,
    /// The tick at which the slot starts.
    tick: u64,
}

/// The level for a timer due at `tick` when the time is `elapsed`: that of
/// the highest base-64 digit in which the two differ. Equal ticks map to level
/// 0, and ticks beyond the wheel's span to the top level.
fn level_for(elapsed: u64, tick: u64) -> usize {
    let differing = ((elapsed ^ tick) | (SLOTS as u64 - 1)).min(WHEEL_SPAN - 1);
    let highest_bit = (u64::BITS - 1 - differing.leading_zeros()) as usize;
    highest_bit / DIGIT_BITS
}

/// The slot for `tick` at `level`: its base-64 digit there.
fn slot_for(tick: u64, level: usize) -> usize {
    ((tick >> (DIGIT_BITS * level)) % SLOTS as u64) as usize
}

/// Ticks spanned by one slot at `level`: 64^level.
fn slot_width(level: usize) -> u64 {
    1 << (DIGIT_BITS * level)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NANOS_PER_MS;
    const SECOND: u64 = 1_000 * MS;
    const HOUR: u64 = 3_600 * SECOND;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;

    /// Advances `wheel` to `now` and returns what fired.
    fn advance<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<T> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        fired
    }

    /// Marsaglia's xorshift64: a seeded stream, enough for spreading timers.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    #[test]
    fn fires_exactly_once_and_never_early() {
        let start = 123 * MS + 456;
        let mut wheel = TimerWheel::new(start);
        let deadline = start + 5 * MS + 500_000; // rounds up to 129 ms
        let rounded = 129 * MS;
        let key = wheel.insert(deadline, "a");
        let exact = wheel.insert(rounded, "b");

        assert!(advance(&mut wheel, deadline - 1).is_empty());
        assert!(
            advance(&mut wheel, deadline).is_empty(),
            "fired before its millisecond ended"
        );
        assert!(advance(&mut wheel, rounded - 1).is_empty());
        assert!(wheel.contains(key) && wheel.contains(exact));
        assert_eq!(advance(&mut wheel, rounded), ["a", "b"]);
        assert!(!wheel.contains(key) && !wheel.contains(exact));
        assert!(advance(&mut wheel, rounded + HOUR).is_empty());
        assert!(wheel.is_empty());
    }

    #[test]
    fn whole_millisecond_deadline_fires_at_that_millisecond() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(7 * MS, ());
        assert!(advance(&mut wheel, 7 * MS - 1).is_empty());
        assert_eq!(advance(&mut wheel, 7 * MS).len(), 1);
    }

    #[test]
    fn cancel_before_fire_returns_the_value_and_it_never_fires() {
        let mut wheel = TimerWheel::new(0);
        let key = wheel.insert(10 * MS, 1);
        let other = wheel.insert(10 * MS, 2);
        assert_eq!(wheel.cancel(key), Some(1));
        assert!(!wheel.contains(key));
        assert_eq!(wheel.cancel(key), None);
        assert_eq!(advance(&mut wheel, YEAR), [2]);
        assert!(!wheel.contains(other));
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut wheel = TimerWheel::new(0);
        let key = wheel.insert(3 * SECOND, 'x');
        assert_eq!(advance(&mut wheel, 3 * SECOND), ['x']);
        assert_eq!(wheel.cancel(key), None);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn stale_key_does_not_touch_the_timer_reusing_its_entry() {
        let mut wheel = TimerWheel::new(0);
        let old = wheel.insert(5 * MS, "old");
        assert_eq!(wheel.cancel(old), Some("old"));
        let new = wheel.insert(5 * MS, "new");
        assert_eq!(new.index, old.index, "the vacant entry should be reused");
        assert_ne!(new, old);

        assert!(!wheel.contains(old));
        assert_eq!(wheel.cancel(old), None);
        assert!(wheel.contains(new));
        assert_eq!(advance(&mut wheel, 5 * MS), ["new"]);

        // Stale after firing, too.
        let newer = wheel.insert(6 * MS, "newer");
        assert_eq!(newer.index, old.index);
        assert_eq!(wheel.cancel(new), None);
        assert_eq!(advance(&mut wheel, 6 * MS), ["newer"]);
    }

    #[test]
    fn past_deadline_fires_on_next_advance_even_with_an_earlier_now() {
        let mut wheel = TimerWheel::new(10 * MS);
        advance(&mut wheel, 50 * MS + 3);
        wheel.insert(20 * MS, "past");
        wheel.insert(0, "zero");
        wheel.insert(50 * MS, "this millisecond");
        wheel.insert(50 * MS + 5, "next millisecond");
        assert!(wheel.next_deadline().unwrap() <= 50 * MS + 3);
        assert_eq!(
            advance(&mut wheel, 40 * MS),
            ["past", "zero", "this millisecond"]
        );
        assert_eq!(wheel.len(), 1);
        assert!(advance(&mut wheel, 50 * MS + 999_999).is_empty());
        assert_eq!(advance(&mut wheel, 51 * MS), ["next millisecond"]);
    }

    #[test]
    fn ties_fire_in_insertion_order_across_cascades() {
        let mut wheel = TimerWheel::new(0);
        let due = 5 * SECOND;
        wheel.insert(due, 0); // level 2 when inserted
        advance(&mut wheel, SECOND);
        wheel.insert(due, 1);
        advance(&mut wheel, due - 10 * MS);
        wheel.insert(due, 2); // level 0 when inserted
        wheel.insert(due - 1, 3); // same millisecond, inserted last
        assert!(advance(&mut wheel, due - 1).is_empty());
        assert_eq!(advance(&mut wheel, due), [0, 1, 2, 3]);
    }

    #[test]
    fn len_is_exact_through_inserts_cancels_and_fires() {
        let mut wheel = TimerWheel::new(0);
        assert!(wheel.is_empty());
        let keys: Vec<_> = (1..=10).map(|i| wheel.insert(i * SECOND, i)).collect();
        assert_eq!(wheel.len(), 10);
        wheel.cancel(keys[0]);
        wheel.cancel(keys[0]);
        wheel.cancel(keys[9]);
        assert_eq!(wheel.len(), 8);
        assert_eq!(advance(&mut wheel, 4 * SECOND), [2, 3, 4]);
        assert_eq!(wheel.len(), 5);
        wheel.cancel(keys[2]); // already fired
        wheel.cancel(keys[4]);
        assert_eq!(wheel.len(), 4);
        wheel.insert(0, 0);
        assert_eq!(wheel.len(), 5);
        assert_eq!(advance(&mut wheel, HOUR), [0, 6, 7, 8, 9]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    /// Parking until `next_deadline` and advancing there, over and over,
    /// reaches each timer exactly at its rounded-up deadline, in a few
    /// wake-ups, for deadlines at every level and beyond the wheel's span.
    #[test]
    fn parking_until_next_deadline_never_oversleeps() {
        let offsets = [
            0,
            1,
            MS,
            3 * MS + 1,
            70 * MS,
            5 * SECOND + 7,
            5 * 60 * SECOND,
            5 * HOUR + 3 * MS,
            20 * DAY,
            2 * YEAR,
            3 * YEAR + 17 * MS,
            10 * YEAR + 1,
        ];
        for start in [0, 987_654_321_012, 63 * MS + 999_999] {
            for offset in offsets {
                let mut wheel = TimerWheel::new(start);
                let due = (start + offset).div_ceil(MS) * MS;
                wheel.insert(start + offset, ());
                let mut now = start;
                let mut wakeups = 0;
                loop {
                    let next = wheel.next_deadline().expect("the timer is armed");
                    assert!(next <= due, "next_deadline {next} after the deadline {due}");
                    now = now.max(next);
                    wakeups += 1;
                    assert!(wakeups <= 12, "{wakeups} wake-ups for offset {offset}");
                    if !advance(&mut wheel, now).is_empty() {
                        break;
                    }
                }
                assert_eq!(now, due, "start {start}, offset {offset}");
                assert_eq!(wheel.next_deadline(), None);
            }
        }
    }

    #[test]
    fn big_jump_fires_everything_due_in_order() {
        let start = 42 * YEAR + 5;
        let mut wheel = TimerWheel::new(start);
        let offsets = [
            10 * YEAR,
            3 * YEAR,
            MS,
            2 * HOUR,
            0,
            5 * SECOND,
            20 * DAY,
            70 * MS,
            40 * YEAR,
        ];
        for (id, offset) in offsets.into_iter().enumerate() {
            wheel.insert(start + offset, id);
        }
        // Timers beyond the wheel's span are not fired early by a jump that
        // passes a rotation of the top level.
        assert_eq!(advance(&mut wheel, start + 2 * YEAR), [4, 2, 7, 5, 3, 6]);
        assert_eq!(wheel.len(), 3);
        assert!(advance(&mut wheel, start + 3 * YEAR - 1).is_empty());
        assert_eq!(advance(&mut wheel, start + 100 * YEAR), [1, 0, 8]);
        assert!(wheel.is_empty());
    }

    /// Bounds the memory per timer: 48 bytes, value included, for a
    /// pointer-sized value.
    #[test]
    fn entry_is_small() {
        assert!(mem::size_of::<Entry<u64>>() <= 48);
        assert!(mem::size_of::<Entry<()>>() <= 40);
    }

    #[test]
    fn millions_of_timers() {
        const TIMERS: u64 = 2_000_000;
        let mut wheel = TimerWheel::new(0);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for id in 0..TIMERS {
            wheel.insert(rng.below(DAY), id);
        }
        assert_eq!(wheel.len(), TIMERS as usize);
        let mut fired = Vec::new();
        wheel.advance(12 * HOUR, &mut fired);
        let half = fired.len() as u64;
        assert!(half > TIMERS * 4 / 10 && half < TIMERS * 6 / 10);
        wheel.advance(DAY, &mut fired);
        assert_eq!(fired.len() as u64, TIMERS);
        assert!(wheel.is_empty());
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Fate {
        Armed,
        Fired,
        Cancelled,
    }

    /// 100k timers spread from now to five hours, some cancelled, advanced
    /// in random steps: each fires exactly once, never early, never later
    /// than the first advance past its deadline, in deadline order; `len` and
    /// `next_deadline` stay true throughout.
    #[test]
    fn many_random_timers_fire_once_in_order() {
        const TIMERS: usize = 100_000;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let start = 1_234_567_891;
        let mut wheel = TimerWheel::new(start);
        let spreads = [2 * MS, 100 * MS, 10 * SECOND, 10 * 60 * SECOND, 5 * HOUR];

        let mut deadlines = Vec::with_capacity(TIMERS);
        let mut keys = Vec::with_capacity(TIMERS);
        for id in 0..TIMERS {
            let spread = spreads[rng.below(spreads.len() as u64) as usize];
            let deadline = start + rng.below(spread);
            deadlines.push(deadline);
            keys.push(wheel.insert(deadline, id));
        }
        let tick = |id: usize| deadlines[id].div_ceil(MS);
        let mut fates = vec![Fate::Armed; TIMERS];
        let mut armed = TIMERS;
        let mut by_deadline: Vec<usize> = (0..TIMERS).collect();
        by_deadline.sort_by_key(|&id| tick(id));
        let mut earliest = 0; // into by_deadline; all before it are done

        let mut picks = XorShift(0xD1B5_4A32_D192_ED03);
        let mut cancel_some =
            |wheel: &mut TimerWheel<usize>, fates: &mut [Fate], armed: &mut usize, count| {
                for _ in 0..count {
                    let id = picks.below(TIMERS as u64) as usize;
                    let cancelled = wheel.cancel(keys[id]);
                    if fates[id] == Fate::Armed {
                        assert_eq!(cancelled, Some(id));
                        fates[id] = Fate::Cancelled;
                        *armed -= 1;
                    } else {
                        assert_eq!(cancelled, None, "timer {id} was {:?}", fates[id]);
                    }
                    assert!(!wheel.contains(keys[id]));
                }
                assert_eq!(wheel.len(), *armed);
            };
        cancel_some(&mut wheel, &mut fates, &mut armed, TIMERS / 10);

        let mut now = start;
        let mut last_tick = 0;
        let mut fired = Vec::new();
        while !wheel.is_empty() {
            while earliest < TIMERS && fates[by_deadline[earliest]] != Fate::Armed {
                earliest += 1;
            }
            let next = wheel.next_deadline().expect("timers are armed");
            assert!(next <= tick(by_deadline[earliest]) * MS);

            // Steps from nanoseconds to minutes, evenly over magnitudes.
            let magnitude = rng.below(40);
            now += rng.below(1 << magnitude);
            wheel.advance(now, &mut fired);
            for id in fired.drain(..) {
                assert_eq!(
                    fates[id],
                    Fate::Armed,
                    "timer {id} fired twice or after cancel"
                );
                fates[id] = Fate::Fired;
                armed -= 1;
                assert!(tick(id) * MS <= now, "timer {id} fired early");
                assert!(tick(id) >= last_tick, "timer {id} fired out of order");
                last_tick = tick(id);
            }
            assert_eq!(wheel.len(), armed);
            while earliest < TIMERS && fates[by_deadline[earliest]] != Fate::Armed {
                earliest += 1;
            }
            if earliest < TIMERS {
                assert!(
                    tick(by_deadline[earliest]) * MS > now,
                    "a due timer did not fire"
                );
            }
            cancel_some(&mut wheel, &mut fates, &mut armed, 20);
        }
        assert!(fates.iter().all(|&fate| fate != Fate::Armed));
        assert!(fates.iter().filter(|&&fate| fate == Fate::Fired).count() > TIMERS / 2);
        assert_eq!(wheel.next_deadline(), None);
    }
}
