//! The plain driver: a condition variable and a flag.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::{Driver, Unpark};

/// A driver that does no I/O: parking waits on a condition variable
/// (a futex on Linux) until unparked or timed out.
///
/// ```
/// use foundation_sched::driver::{Driver, ParkDriver};
/// use std::time::Duration;
///
/// let mut driver = ParkDriver::new();
/// driver.unparker().unpark();
/// // Returns at once: the unpark came first.
/// driver.park(Some(Duration::from_secs(10)));
/// ```
#[derive(Default)]
pub struct ParkDriver {
    parker: Arc<Parker>,
}

impl ParkDriver {
    /// A new driver, not yet unparked.
    pub fn new() -> ParkDriver {
        ParkDriver::default()
    }
}

#[derive(Default)]
struct Parker {
    notified: Mutex<bool>,
    condvar: Condvar,
}

impl Driver for ParkDriver {
    fn park(&mut self, timeout: Option<Duration>) {
        let mut notified = self
            .parker
            .notified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*notified {
            notified = match timeout {
                Some(timeout) => {
                    self.parker
                        .condvar
                        .wait_timeout(notified, timeout)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .parker
                    .condvar
                    .wait(notified)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        *notified = false;
    }

    fn unparker(&self) -> Arc<dyn Unpark> {
        self.parker.clone()
    }
}

impl Unpark for Parker {
    fn unpark(&self) {
        *self.notified.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.condvar.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpark_from_another_thread_ends_an_untimed_park() {
        let mut driver = ParkDriver::new();
        let unparker = driver.unparker();
        let waker = std::thread::spawn(move || unparker.unpark());
        driver.park(None);
        waker.join().unwrap();
    }

    #[test]
    fn a_park_consumes_the_unpark() {
        let mut driver = ParkDriver::new();
        driver.unparker().unpark();
        driver.park(None);
        assert!(!*driver.parker.notified.lock().unwrap());
    }
}
