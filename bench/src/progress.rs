//! A spinner on stderr telling what is being measured.
//!
//! It stays hidden for the first second, so short runs print nothing but
//! their results, and it never appears when stderr is not a terminal or JSON
//! is requested (machine-read runs must stay clean). It redraws four times a
//! second from indicatif's ticker thread; that thread sleeps in between, so
//! its cost on the measurements is far below their noise.

use std::borrow::Cow;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a run goes before the spinner shows.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// Spinner redraw interval once shown.
const TICK: Duration = Duration::from_millis(250);

/// Progress of a benchmark run; every method is a no-op when disabled.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    done: Arc<AtomicBool>,
    revealer: Option<thread::JoinHandle<()>>,
}

impl Progress {
    /// A spinner if `wanted` and stderr is a terminal, nothing otherwise.
    pub(crate) fn new(wanted: bool) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        if !wanted || !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                done,
                revealer: None,
            };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        let revealer = {
            let bar = bar.clone();
            let done = Arc::clone(&done);
            thread::Builder::new()
                .name("bench-progress".to_owned())
                .spawn(move || {
                    thread::park_timeout(SHOW_AFTER);
                    if !done.load(Ordering::Acquire) {
                        bar.set_draw_target(ProgressDrawTarget::stderr());
                        bar.enable_steady_tick(TICK);
                    }
                })
                .ok()
        };
        Self {
            bar: Some(bar),
            done,
            revealer,
        }
    }

    /// Says what is being measured now.
    pub(crate) fn step(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// Prints a line on stderr without tearing the spinner.
    pub(crate) fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Runs `f` (which prints) with the spinner out of the way.
    pub(crate) fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the spinner for good.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(revealer) = self.revealer.take() {
            revealer.thread().unpark();
            let _ = revealer.join();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
