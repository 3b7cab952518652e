//! The simulated disk under crashes: nodes that count their boots and
//! their ticks on a [`Disk::simulated`], crashed and restarted on a
//! schedule drawn from a seed. At every boot, checked: what was synced is
//! there, what was never synced is not, and nothing synced was lost.
//!
//! `FOUNDATION_SIM_SEEDS` raises the number of seeds (default 8),
//! `FOUNDATION_SIM_SEED` replays one.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sim::every_seed;
use foundation::sim::Simulation;
use foundation::storage::Disk;
use foundation::{Context, Handle, Runtime};

const DEFAULT_SEEDS: u64 = 8;

const NODES: usize = 3;

/// What the test knows of one node: its disk, the boots it started, the
/// last tick its ticker synced and the last it wrote.
#[derive(Default)]
struct Ledger {
    boots: u64,
    synced_tick: u64,
    written_tick: u64,
    violations: Vec<String>,
}

fn number(disk: &Disk, key: &[u8]) -> u64 {
    disk.get(key)
        .expect("the simulated disk reads")
        .map_or(0, |bytes| {
            u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
        })
}

/// Node boot: checks the disk against the ledger, counts the boot
/// (synced), leaves a write it never syncs, and starts a ticker that
/// writes a tick every 10 ms and syncs every other one.
fn boot(handle: &Handle, disk: &Disk, ledger: &Arc<Mutex<Ledger>>) {
    {
        let mut ledger = ledger.lock().unwrap();
        let boots = number(disk, b"boots");
        if boots != ledger.boots {
            let found = format!("boot {}: the disk counts {boots} boots", ledger.boots + 1);
            ledger.violations.push(found);
        }
        if disk.get(b"scratch").unwrap().is_some() {
            let found = format!("boot {}: a write never synced survived", ledger.boots + 1);
            ledger.violations.push(found);
        }
        let tick = number(disk, b"tick");
        if tick < ledger.synced_tick || tick > ledger.written_tick {
            let found = format!(
                "boot {}: tick {tick}, synced {}, written {}",
                ledger.boots + 1,
                ledger.synced_tick,
                ledger.written_tick
            );
            ledger.violations.push(found);
        }
        ledger.boots += 1;
        ledger.written_tick = tick;
        ledger.synced_tick = tick;
        disk.put(b"boots", &ledger.boots.to_le_bytes());
        disk.sync().unwrap();
        disk.put(b"scratch", b"never synced");
    }
    let (disk, ledger) = (disk.clone(), ledger.clone());
    handle
        .spawn(move |cx: Context<()>| async move {
            loop {
                cx.sleep(Duration::from_millis(10)).await;
                let mut ledger = ledger.lock().unwrap();
                ledger.written_tick += 1;
                disk.put(b"tick", &ledger.written_tick.to_le_bytes());
                if ledger.written_tick % 2 == 0 {
                    // The scratch write rides along with this sync unless
                    // it is deleted first: keep it unsynced.
                    disk.delete(b"scratch");
                    disk.sync().unwrap();
                    disk.put(b"scratch", b"never synced");
                    ledger.synced_tick = ledger.written_tick;
                }
                if ledger.written_tick == u64::MAX {
                    return;
                }
            }
        })
        .expect("spawn the ticker");
}

fn run(seed: u64) -> Result<(), String> {
    let mut sim = Simulation::new(seed);
    let disks: Vec<Disk> = (0..NODES).map(|_| Disk::simulated()).collect();
    let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..NODES).map(|_| Arc::default()).collect();
    for (disk, ledger) in disks.iter().zip(&ledgers) {
        let (disk, ledger) = (disk.clone(), ledger.clone());
        sim.add_restartable_node(Runtime::builder, move |handle: &Handle| {
            boot(handle, &disk, &ledger)
        })
        .map_err(|e| e.to_string())?;
    }
    let mut schedule = sim.rng(1);
    for _ in 0..30 {
        sim.run_for(Duration::from_millis(schedule.below(100) + 1));
        let node = schedule.below(NODES as u64) as usize;
        if sim.is_up(node) {
            // A crash: whatever the node had not synced is gone.
            disks[node].crash();
            if schedule.chance(0.5) {
                sim.crash(node);
                continue;
            }
        }
        sim.restart(node).map_err(|e| e.to_string())?;
    }
    for (node, disk) in disks.iter().enumerate() {
        if sim.is_up(node) {
            disk.crash();
        }
        sim.restart(node).map_err(|e| e.to_string())?;
    }
    sim.run_for(Duration::from_millis(50));
    for (node, ledger) in ledgers.iter().enumerate() {
        let ledger = ledger.lock().unwrap();
        if let Some(violation) = ledger.violations.first() {
            return Err(format!("node {node}: {violation}"));
        }
        if ledger.boots < 2 {
            return Err(format!("node {node} booted only {} times", ledger.boots));
        }
    }
    Ok(())
}

#[test]
fn sim_disk_keeps_what_was_synced_and_loses_the_rest_at_every_crash() {
    every_seed(DEFAULT_SEEDS, "sim_disk", "sim_disk", run);
}
