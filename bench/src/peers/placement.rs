//! Where the two ends of a figure between processes run: one core, two
//! cores, or wherever the kernel puts them.
//!
//! On a small virtual machine, placement decides the figure. On the
//! two-core Firecracker VM this project runs on, a 64-byte loopback TCP
//! round trip takes about 4 µs when both processes share a core (a wake-up
//! stays on the core) and about 60 µs when they run on two: every wake-up of
//! a sleeping thread on the other core is an inter-processor interrupt to a
//! halted virtual CPU, which the hypervisor pays dearly for. Left alone, the
//! kernel moves the two ends as it likes, and a run is a mixture whose
//! percentiles depend on the moment (and on whether a neighbour keeps the
//! other core busy). Distributed Erlang flips the same way, between about
//! 11 µs and 70 µs.
//!
//! [`Placement::OneCore`] and [`Placement::TwoCores`] pin both ends, so a
//! figure says which case it is; [`Placement::Any`] leaves them to the
//! kernel, as an unpinned deployment would. A child inherits the CPU mask of
//! the thread that starts it, so [`Placement::start`] pins the calling
//! thread to the far end's core while it starts the far end, then to the
//! near end's core for the figure, and restores its mask when the returned
//! [`Pinned`] is dropped.
//!
//! This is the one module of the peers that needs `unsafe`: the affinity
//! system calls and libc's `cpu_set_t` helpers.

use std::io;
use std::mem;

use clap::ValueEnum;

/// Which cores the two ends of a figure run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Placement {
    /// Wherever the kernel puts them, and moves them.
    Any,
    /// Both on the first core this process may use: wake-ups stay on it,
    /// and the two ends take turns.
    OneCore,
    /// One core each (the first two this process may use): every wake-up
    /// crosses cores, and both ends run at once.
    TwoCores,
}

impl Placement {
    /// Runs `start_far_end` (which starts the far end's process) with the
    /// calling thread pinned to the far end's core, then pins the calling
    /// thread to the near end's core until the returned guard is dropped.
    /// [`Placement::Any`] pins nothing.
    pub(crate) fn start<T>(
        self,
        start_far_end: impl FnOnce() -> Result<T, String>,
    ) -> Result<(T, Option<Pinned>), String> {
        let Some((near, far)) = self.cores()? else {
            return Ok((start_far_end()?, None));
        };
        let pin_error = |e: io::Error| format!("pinning to core {far}: {e}");
        let pinned = Pinned::to(far).map_err(pin_error)?;
        let far_end = start_far_end()?;
        pinned
            .move_to(near)
            .map_err(|e| format!("pinning to core {near}: {e}"))?;
        Ok((far_end, Some(pinned)))
    }

    /// `(near, far)`: the cores of the calling end and of the far end,
    /// `None` for [`Placement::Any`].
    fn cores(self) -> Result<Option<(usize, usize)>, String> {
        if self == Placement::Any {
            return Ok(None);
        }
        let allowed = allowed().map_err(|e| format!("reading this thread's cores: {e}"))?;
        match (self, allowed.as_slice()) {
            (Placement::OneCore, [core, ..]) => Ok(Some((*core, *core))),
            (Placement::TwoCores, [near, far, ..]) => Ok(Some((*near, *far))),
            _ => Err(format!(
                "{self:?} needs more cores than the {} this process may use",
                allowed.len()
            )),
        }
    }
}

/// The calling thread pinned to one core; its former mask is restored on
/// drop.
#[derive(Debug)]
pub(crate) struct Pinned {
    saved: libc::cpu_set_t,
}

impl Pinned {
    /// Pins the calling thread to `core`.
    pub(crate) fn to(core: usize) -> io::Result<Self> {
        let saved = current()?;
        pin(core)?;
        Ok(Self { saved })
    }

    /// Moves the (still pinned) calling thread to `core`.
    pub(crate) fn move_to(&self, core: usize) -> io::Result<()> {
        pin(core)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = apply(&self.saved);
    }
}

/// The cores the calling thread may run on, ascending.
fn allowed() -> io::Result<Vec<usize>> {
    let mask = current()?;
    Ok((0..SET_SIZE)
        // SAFETY: `core < SET_SIZE`, the number of bits of a
        // `cpu_set_t`, so the bit exists.
        .filter(|&core| unsafe { libc::CPU_ISSET(core, &mask) })
        .collect())
}

/// Cores a `cpu_set_t` can name.
const SET_SIZE: usize = 8 * mem::size_of::<libc::cpu_set_t>();

fn empty() -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is an array of integers, for which all zeroes
    // is a valid value (the empty set).
    unsafe { mem::zeroed() }
}

fn current() -> io::Result<libc::cpu_set_t> {
    let mut mask = empty();
    // SAFETY: `mask` is a live, writable `cpu_set_t` of the size passed;
    // pid 0 names the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut mask) };
    if rc == 0 {
        Ok(mask)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pin(core: usize) -> io::Result<()> {
    if core >= SET_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is beyond a cpu_set_t"),
        ));
    }
    let mut mask = empty();
    // SAFETY: `core < SET_SIZE`, checked above, so the bit exists.
    unsafe { libc::CPU_SET(core, &mut mask) };
    apply(&mask)
}

fn apply(mask: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `mask` is a live `cpu_set_t` of the size passed, only read;
    // pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), mask) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_is_undone() {
        let before = allowed().expect("allowed");
        let core = before[0];
        {
            let pinned = Pinned::to(core).expect("pin");
            assert_eq!(allowed().expect("allowed"), [core]);
            pinned
                .move_to(*before.last().expect("a core"))
                .expect("move");
        }
        assert_eq!(allowed().expect("allowed"), before);
        assert_eq!(Placement::Any.cores(), Ok(None));
        assert_eq!(Placement::OneCore.cores(), Ok(Some((core, core))));
    }

    #[test]
    fn start_pins_the_far_end_then_the_near_end() {
        let before = allowed().expect("allowed");
        let (far_cores, pinned) = Placement::OneCore
            .start(|| allowed().map_err(|e| e.to_string()))
            .expect("start");
        assert_eq!(far_cores, [before[0]]);
        assert_eq!(allowed().expect("allowed"), [before[0]]);
        drop(pinned);
        assert_eq!(allowed().expect("allowed"), before);
        let (_, pinned) = Placement::Any.start(|| Ok(())).expect("start");
        assert!(pinned.is_none());
    }
}
