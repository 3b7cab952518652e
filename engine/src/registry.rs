//! Names and groups of processes: find a process by name instead of by pid,
//! and address a set of processes at once.
//!
//! * **Names.** [`register`] gives a process a name on its node; [`whereis`]
//!   finds it again, typed; the name is removed when the process ends (or
//!   by [`unregister`]). A name belongs to one process at a time: a taken
//!   name is refused with [`RegistryError::NameTaken`].
//! * **Groups.** [`join`] adds a process to a named group (a process may be
//!   in many groups, and a group may hold processes of any type);
//!   [`members`] lists a group; a process leaves every group when it ends.
//!
//! Both are runtime-wide: any process on any shard sees the same names and
//! groups. Entries are removed by an exit hook on the process's own shard,
//! when it ends, so a name never outlives its process by more than that
//! shard's teardown of it.
//!
//! Every call takes a [`Name`]. Today every name is [`Name::local`]: the
//! cluster-wide scope arrives with distribution as another kind of `Name`,
//! so callers will not change shape.
//!
//! ```
//! use foundation::registry::{self, Name};
//! use foundation::{Context, Envelope, Runtime};
//!
//! let runtime = Runtime::builder().shards(2).build().unwrap();
//! let answer = runtime
//!     .block_on(|cx: Context<u32>| async move {
//!         let me = cx.addr();
//!         let doubler = cx.spawn(move |cx: Context<u32>| async move {
//!             while let Envelope::Msg(n) = cx.recv().await {
//!                 cx.send(&me, n * 2);
//!             }
//!         });
//!         registry::register(&cx, Name::local("doubler"), &doubler).unwrap();
//!         let found = registry::whereis::<u32, _>(&cx, &Name::local("doubler")).unwrap();
//!         cx.send(&found, 21);
//!         cx.recv().await.into_msg()
//!     })
//!     .unwrap();
//! assert_eq!(answer, Some(42));
//! ```

use std::any::TypeId;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use foundation_sched::{Addr, Context, Pid};

/// A name for a process or a group, with its scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    name: Arc<str>,
}

impl Name {
    /// A name known on this node.
    pub fn local(name: impl Into<Arc<str>>) -> Name {
        Name { name: name.into() }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a registry operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name belongs to another process.
    NameTaken {
        /// The name.
        name: Name,
        /// Its holder.
        holder: Pid,
    },
    /// The process already has a name (a process has at most one).
    AlreadyNamed {
        /// The process.
        pid: Pid,
        /// Its name.
        name: Name,
    },
    /// No process has this name.
    NotRegistered(Name),
    /// The named process's messages are not of the type asked for.
    WrongType(Name),
    /// The name was to be reachable from other nodes, and this node runs
    /// no distribution.
    NotDistributed(Name),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NameTaken { name, holder } => {
                write!(f, "name {name} is taken by {holder}")
            }
            RegistryError::AlreadyNamed { pid, name } => write!(f, "{pid} is already named {name}"),
            RegistryError::NotRegistered(name) => write!(f, "no process is named {name}"),
            RegistryError::WrongType(name) => {
                write!(f, "the process named {name} takes another message type")
            }
            RegistryError::NotDistributed(name) => {
                write!(
                    f,
                    "{name} cannot be reached from other nodes: no distribution"
                )
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// Gives the process at `addr` the name `name` until it ends or is
/// unregistered.
pub fn register<M, T>(cx: &Context<M>, name: Name, addr: &Addr<T>) -> Result<(), RegistryError>
where
    M: Send + 'static,
    T: Send + 'static,
{
    let registry = cx.runtime().extension::<Registry>();
    let pid = addr.pid();
    {
        let mut names = registry
            .names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = names.by_name.get(&name) {
            return Err(RegistryError::NameTaken {
                name,
                holder: entry.pid,
            });
        }
        if let Some(existing) = names.by_pid.get(&pid) {
            return Err(RegistryError::AlreadyNamed {
                pid,
                name: existing.clone(),
            });
        }
        names.by_name.insert(
            name.clone(),
            Entry {
                pid,
                message: TypeId::of::<T>(),
            },
        );
        names.by_pid.insert(pid, name.clone());
    }
    cx.on_exit(
        pid,
        Box::new(move |_| {
            registry.remove_name(&name, pid);
        }),
    );
    Ok(())
}

/// Removes `name`. Returns whether it was registered.
pub fn unregister<M: Send + 'static>(cx: &Context<M>, name: &Name) -> bool {
    let registry = cx.runtime().extension::<Registry>();
    let holder = registry
        .names
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .by_name
        .get(name)
        .map(|entry| entry.pid);
    holder.is_some_and(|pid| registry.remove_name(name, pid))
}

/// The process named `name`, typed: an error if no process has the name
/// or if its messages are not `T`.
pub fn whereis<T, M>(cx: &Context<M>, name: &Name) -> Result<Addr<T>, RegistryError>
where
    T: Send + 'static,
    M: Send + 'static,
{
    let registry = cx.runtime().extension::<Registry>();
    let names = registry
        .names
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let entry = names
        .by_name
        .get(name)
        .ok_or_else(|| RegistryError::NotRegistered(name.clone()))?;
    if entry.message != TypeId::of::<T>() {
        return Err(RegistryError::WrongType(name.clone()));
    }
    Ok(Addr::from_pid(entry.pid))
}

/// The pid named `name`, whatever its message type.
pub fn whereis_pid<M: Send + 'static>(cx: &Context<M>, name: &Name) -> Option<Pid> {
    let registry = cx.runtime().extension::<Registry>();
    let names = registry
        .names
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names.by_name.get(name).map(|entry| entry.pid)
}

/// Every registered name.
pub fn registered<M: Send + 'static>(cx: &Context<M>) -> Vec<Name> {
    let registry = cx.runtime().extension::<Registry>();
    let names = registry
        .names
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names.by_name.keys().cloned().collect()
}

/// Adds `pid` to group `group` (no effect if it is a member already). It
/// leaves when it ends.
pub fn join<M: Send + 'static>(cx: &Context<M>, group: Name, pid: Pid) {
    let registry = cx.runtime().extension::<Registry>();
    let joined = registry
        .groups
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(group.clone())
        .or_default()
        .insert(pid);
    if joined {
        cx.on_exit(
            pid,
            Box::new(move |_| {
                registry.remove_member(&group, pid);
            }),
        );
    }
}

/// Removes `pid` from `group`. Returns whether it was a member.
pub fn leave<M: Send + 'static>(cx: &Context<M>, group: &Name, pid: Pid) -> bool {
    cx.runtime()
        .extension::<Registry>()
        .remove_member(group, pid)
}

/// The members of `group`, in pid order; empty if the group has none.
pub fn members<M: Send + 'static>(cx: &Context<M>, group: &Name) -> Vec<Pid> {
    let registry = cx.runtime().extension::<Registry>();
    let groups = registry
        .groups
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    groups
        .get(group)
        .map(|members| members.iter().copied().collect())
        .unwrap_or_default()
}

/// The runtime-wide table of names and groups.
#[derive(Default)]
struct Registry {
    names: RwLock<Names>,
    groups: RwLock<HashMap<Name, BTreeSet<Pid>>>,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<Name, Entry>,
    by_pid: HashMap<Pid, Name>,
}

struct Entry {
    pid: Pid,
    message: TypeId,
}

impl Registry {
    /// Removes `name` if `pid` still holds it (a hook of an old holder
    /// must not remove a newer holder's name).
    fn remove_name(&self, name: &Name, pid: Pid) -> bool {
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if names
            .by_name
            .get(name)
            .is_some_and(|entry| entry.pid == pid)
        {
            names.by_name.remove(name);
            names.by_pid.remove(&pid);
            true
        } else {
            false
        }
    }

    fn remove_member(&self, group: &Name, pid: Pid) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        let Some(members) = groups.get_mut(group) else {
            return false;
        };
        let removed = members.remove(&pid);
        if members.is_empty() {
            groups.remove(group);
        }
        removed
    }
}
