//! Foundation's integration suites live in `tests/tests/`, named by area
//! (`sched_*.rs`, later `dist_*.rs`, `sim_*.rs`). This library holds what the
//! suites share.
