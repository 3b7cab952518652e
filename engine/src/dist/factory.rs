//! Remote spawn through each node's process factory.
//!
//! A node spawns for others only what it registered: a *kind* is a name,
//! an argument type and the function that starts a process from its
//! arguments ([`Factory::register`]). A request names the kind and carries
//! the arguments archived; the factory checks the kind is registered and
//! allowed ([`Factory::allow_only`]), validates the arguments as the kind's
//! type, spawns, and answers with the pid — or with why not, as a typed
//! [`SpawnError`]. Requests are answered on the thread that receives them,
//! in arrival order, without another hop — except a linked spawn's, which
//! the new process answers itself once it has linked.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use foundation_sched::{Context, Handle, NodeId, Pid, ProcessResult};
use foundation_transport::frame::{self, Wire};
use foundation_transport::SendError;
use rkyv::api::high::HighDeserializer;
use rkyv::{rancor, Archive, Deserialize, Serialize};

use super::calls::{ask, CallError};
use super::{well_known, Dist, DistMessage, Service};

/// What a node lets other nodes spawn on it.
///
/// ```no_run
/// use foundation::dist::{self, Factory};
/// use foundation::{Context, NodeId};
/// use std::time::Duration;
///
/// # fn setup(factory: &Factory) {
/// // On the node that runs the workers:
/// factory.register("greeter", |_cx: Context<()>, name: String| async move {
///     println!("hello, {name}");
/// });
/// # }
/// # async fn elsewhere(cx: Context<()>) {
/// // On any node of the cluster:
/// let pid = dist::spawn(&cx, NodeId(7), "greeter", &String::from("world"), Duration::from_secs(1))
///     .await
///     .unwrap();
/// # }
/// ```
#[derive(Default)]
pub struct Factory {
    kinds: RwLock<HashMap<String, Arc<dyn Kind>>>,
    /// `None`: every registered kind; otherwise only these.
    allowed: RwLock<Option<BTreeSet<String>>>,
}

/// Why a remote spawn failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// The node has no kind of that name.
    Unknown(String),
    /// The kind is registered but the node's allow-list leaves it out.
    Denied(String),
    /// The arguments are not a valid archive of the kind's type.
    BadArguments(String),
    /// The node could not spawn (it is shutting down).
    Failed(String),
    /// The node went down, or could not be reached.
    NodeDown,
    /// No answer within the timeout.
    Timeout,
    /// The request could not be sent.
    Send(SendError),
    /// The answer was not understood.
    BadAnswer(String),
    /// This node runs no distribution.
    NotDistributed,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Unknown(kind) => write!(f, "no process kind {kind:?} there"),
            SpawnError::Denied(kind) => write!(f, "spawning {kind:?} is not allowed there"),
            SpawnError::BadArguments(error) => write!(f, "bad arguments: {error}"),
            SpawnError::Failed(error) => write!(f, "the spawn failed: {error}"),
            SpawnError::NodeDown => f.write_str("the node is down"),
            SpawnError::Timeout => f.write_str("no answer in time"),
            SpawnError::Send(error) => write!(f, "cannot send the request: {error}"),
            SpawnError::BadAnswer(error) => write!(f, "bad answer: {error}"),
            SpawnError::NotDistributed => f.write_str("this node runs no distribution"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Spawns a process of `kind` on `node` (this one included) with `args`,
/// through that node's [`Factory`]; waits at most `timeout` for its pid.
pub async fn spawn<M: Send + 'static, A: Wire>(
    cx: &Context<M>,
    node: NodeId,
    kind: &str,
    args: &A,
    timeout: Duration,
) -> Result<Pid, SpawnError> {
    let args = frame::archive(args).map_err(|e| SpawnError::BadArguments(e.to_string()))?;
    spawn_archived(cx, node, kind, args, false, timeout).await
}

/// Spawns like [`spawn`], linked to the calling process, as Erlang's
/// `spawn_link/4`: the new process links first and only then sends its
/// pid back, on the same connection, so when the caller learns the pid the
/// link is in place; a process that never ran (its node died first) never
/// answers, and the spawn times out or fails with [`SpawnError::NodeDown`].
pub async fn spawn_link<M: Send + 'static, A: Wire>(
    cx: &Context<M>,
    node: NodeId,
    kind: &str,
    args: &A,
    timeout: Duration,
) -> Result<Pid, SpawnError> {
    let args = frame::archive(args).map_err(|e| SpawnError::BadArguments(e.to_string()))?;
    spawn_archived(cx, node, kind, args, true, timeout).await
}

/// [`spawn`] (or, with `link`, [`spawn_link`]) with the arguments archived
/// already ([`frame::archive`]), as an ecosystem keeps its workers'
/// arguments.
pub(crate) async fn spawn_archived<M: Send + 'static>(
    cx: &Context<M>,
    node: NodeId,
    kind: &str,
    args: Vec<u8>,
    link: bool,
    timeout: Duration,
) -> Result<Pid, SpawnError> {
    let dist = Dist::of(cx).map_err(|_| SpawnError::NotDistributed)?;
    let factory = well_known(node, Service::Dist);
    let kind_name = kind.to_owned();
    let linker = cx.pid().to_bits();
    let request = move |id| match link {
        true => DistMessage::SpawnLinked {
            id,
            kind: kind_name,
            args,
            linker,
        },
        false => DistMessage::Spawn {
            id,
            kind: kind_name,
            args,
        },
    };
    let body = ask(cx, &dist, factory, None, request, timeout)
        .await
        .map_err(|error| match error {
            CallError::Timeout => SpawnError::Timeout,
            CallError::Send(SendError::UnknownPeer(_)) | CallError::Exited(_) => {
                SpawnError::NodeDown
            }
            CallError::Send(error) => SpawnError::Send(error),
            other => SpawnError::BadAnswer(other.to_string()),
        })?;
    let answer: SpawnAnswer =
        frame::unarchive(&body).map_err(|e| SpawnError::BadAnswer(e.to_string()))?;
    match answer {
        SpawnAnswer::Spawned(pid) => Ok(Pid::from_bits(pid)),
        SpawnAnswer::Unknown => Err(SpawnError::Unknown(kind.to_owned())),
        SpawnAnswer::Denied => Err(SpawnError::Denied(kind.to_owned())),
        SpawnAnswer::BadArguments(error) => Err(SpawnError::BadArguments(error)),
        SpawnAnswer::Failed(error) => Err(SpawnError::Failed(error)),
    }
}

impl Factory {
    /// Registers `kind`: a request for it spawns `start(cx, args)` on this
    /// node, with the request's arguments validated and deserialized as
    /// `A`. A kind registered again is replaced.
    pub fn register<A, M, F, Fut>(&self, kind: &str, start: F)
    where
        A: Wire + Send + 'static,
        A::Archived: Deserialize<A, HighDeserializer<rancor::Error>>,
        M: Send + 'static,
        F: Fn(Context<M>, A) -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: ProcessResult,
    {
        let kind_fn: Arc<dyn Kind> = Arc::new(Typed {
            start: Arc::new(start),
            types: std::marker::PhantomData,
        });
        self.kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind.to_owned(), kind_fn);
    }

    /// Allows only `kinds` to be spawned from other nodes (the node's
    /// spawn allow-list); without a list, every registered kind is.
    pub fn allow_only(&self, kinds: impl IntoIterator<Item = impl Into<String>>) {
        let list = kinds.into_iter().map(Into::into).collect();
        *self.allowed.write().unwrap_or_else(PoisonError::into_inner) = Some(list);
    }

    /// The registered kinds, in name order.
    pub fn kinds(&self) -> Vec<String> {
        let kinds = self.kinds.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = kinds.keys().cloned().collect();
        names.sort();
        names
    }

    /// Answers a spawn request: the archived [`SpawnAnswer`], or `None`
    /// when the new process, linked, answers itself through `link`.
    pub(crate) fn spawn(
        &self,
        handle: &Handle,
        kind: &str,
        args: &[u8],
        link: Option<Link>,
    ) -> Option<Vec<u8>> {
        self.try_spawn(handle, kind, args, link)
            .map(|answer| answer.archived())
    }

    fn try_spawn(
        &self,
        handle: &Handle,
        kind: &str,
        args: &[u8],
        link: Option<Link>,
    ) -> Option<SpawnAnswer> {
        let found = self
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
            .cloned();
        let Some(found) = found else {
            return Some(SpawnAnswer::Unknown);
        };
        let allowed = self.allowed.read().unwrap_or_else(PoisonError::into_inner);
        if allowed.as_ref().is_some_and(|list| !list.contains(kind)) {
            return Some(SpawnAnswer::Denied);
        }
        drop(allowed);
        found.spawn(handle, args, link)
    }
}

/// A factory's answer, archived into a reply.
#[derive(Archive, Serialize, Deserialize, Debug)]
enum SpawnAnswer {
    Spawned(u64),
    Unknown,
    Denied,
    BadArguments(String),
    Failed(String),
}

/// A registered kind, its argument type erased.
trait Kind: Send + Sync {
    /// Spawns with `args`. Linked, the new process links to the linker
    /// and answers itself (`None`); otherwise, the answer.
    fn spawn(&self, handle: &Handle, args: &[u8], link: Option<Link>) -> Option<SpawnAnswer>;
}

/// A spawn linked to `linker`: the new process links, then hands its
/// archived answer to `answer`.
pub(crate) struct Link {
    pub(crate) linker: Pid,
    pub(crate) answer: Box<dyn FnOnce(Vec<u8>) + Send>,
}

impl SpawnAnswer {
    fn archived(&self) -> Vec<u8> {
        frame::archive(self).expect("a spawn answer encodes")
    }
}

struct Typed<A, M, F> {
    start: Arc<F>,
    types: std::marker::PhantomData<fn(A, M)>,
}

impl<A, M, F, Fut> Kind for Typed<A, M, F>
where
    A: Wire + Send + 'static,
    A::Archived: Deserialize<A, HighDeserializer<rancor::Error>>,
    M: Send + 'static,
    F: Fn(Context<M>, A) -> Fut + Send + Sync + 'static,
    Fut: Future + 'static,
    Fut::Output: ProcessResult,
{
    fn spawn(&self, handle: &Handle, args: &[u8], link: Option<Link>) -> Option<SpawnAnswer> {
        let args: A = match frame::unarchive(args) {
            Ok(args) => args,
            Err(error) => return Some(SpawnAnswer::BadArguments(error.to_string())),
        };
        let start = self.start.clone();
        let linked = link.is_some();
        let spawned = handle.spawn(move |cx: Context<M>| async move {
            if let Some(Link { linker, answer }) = link {
                // The link first, then the answer, both on the linker
                // node's control lane: when the linker learns the pid, the
                // link is there, and a linker that is gone takes this
                // process with it before the kind's code runs.
                cx.link(linker);
                answer(SpawnAnswer::Spawned(cx.pid().to_bits()).archived());
            }
            start(cx, args).await
        });
        match spawned {
            Ok(_) if linked => None,
            Ok(addr) => Some(SpawnAnswer::Spawned(addr.pid().to_bits())),
            Err(error) => Some(SpawnAnswer::Failed(error.to_string())),
        }
    }
}
