//! A node: a runtime, its transport and the engine's own services, started
//! from one configuration and stopped in order.
//!
//! [`Node::start`] builds the runtime with the transport's I/O backend,
//! binds the listen address, and starts the node's system supervisor,
//! under which the engine's own processes run: the peer service, the signal
//! service of [`dist`](crate::dist), and (as they land) the process factory
//! and the name registry. The peer
//! service joins the cluster through the configured seeds.
//! [`Node::stop`] leaves the cluster first, so peers see
//! [`DownReason::Left`](crate::membership::DownReason::Left) rather than a
//! failure, then stops the transport and the runtime.
//!
//! ```
//! use foundation::membership::PeerService;
//! use foundation::node::{Node, NodeConfig};
//! use std::time::Duration;
//!
//! let first = Node::start(NodeConfig::new("alpha", "secret").shards(1)).unwrap();
//! let second = Node::start(
//!     NodeConfig::new("beta", "secret").shards(1).seed(first.addr()),
//! )
//! .unwrap();
//! while second.membership().members().is_empty() {
//!     std::thread::sleep(Duration::from_millis(10));
//! }
//! assert_eq!(second.membership().members()[0].name, "alpha");
//! second.stop();
//! first.stop();
//! ```

mod config;

pub use config::{ChannelOptions, ConfigError, FaultConfig, NodeConfig};

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use foundation_sched::{Handle, NodeId, Runtime, ShutdownReport};
use foundation_transport::{Cookie, StartError, Transport, TransportConfig};

use crate::dist::Dist;
use crate::membership::{boot_stamp, FullMesh, Member};
use crate::storage::{Disk, StorageError};
use crate::supervision::{Strategy, SupervisorRef, SupervisorSpec};

/// A running node.
pub struct Node {
    runtime: Runtime,
    services: Services,
}

/// What a node runs on its runtime: its transport, peer service,
/// distribution and disk, with the system supervisor over the engine's own
/// processes. [`Node::start`] starts them on a runtime of its own; a
/// simulation starts them inside a simulated node with
/// [`Services::start_simulated`], through the same code.
pub struct Services {
    transport: Transport,
    mesh: FullMesh,
    dist: Dist,
    disk: Option<Disk>,
    supervisor: SupervisorRef,
}

/// The node's database file, under its data directory.
const DATABASE: &str = "node.redb";

/// Why a node could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is wrong.
    Config(ConfigError),
    /// The data directory could not be made.
    DataDir(std::io::Error),
    /// The runtime or the transport could not start.
    Start(StartError),
    /// The system supervisor could not be spawned.
    Spawn(foundation_sched::SpawnError),
    /// The node's database could not be opened.
    Storage(StorageError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Config(error) => write!(f, "{error}"),
            NodeError::DataDir(error) => write!(f, "data directory: {error}"),
            NodeError::Start(error) => write!(f, "{error}"),
            NodeError::Spawn(error) => write!(f, "system supervisor: {error}"),
            NodeError::Storage(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl Node {
    /// Starts a node as `config` says and has it join its seeds.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.check().map_err(NodeError::Config)?;
        let secret = config.cookie_secret().map_err(NodeError::Config)?;
        let disk = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(NodeError::DataDir)?;
                Some(Disk::open(dir.join(DATABASE)).map_err(NodeError::Storage)?)
            }
            None => None,
        };
        let mut builder = Runtime::builder().node(config.node_id());
        if let Some(shards) = config.shards {
            builder = builder.shards(shards);
        }
        if let Some(cores) = &config.cores {
            builder = builder.cores(cores.clone());
        }
        let mut transport_config = TransportConfig::new(config.name.clone(), Cookie::new(secret));
        transport_config.listen = config.listen;
        transport_config.channels = config.channel_specs();
        let (runtime, transport) =
            Transport::start(builder, transport_config).map_err(NodeError::Start)?;
        let boot = boot_stamp();
        let advertise = config.advertise.unwrap_or(transport.local_addr());
        let draws = boot ^ transport.incarnation();
        let services = Services::start(
            runtime.handle(),
            transport,
            &config,
            advertise,
            disk,
            boot,
            draws,
        )?;
        Ok(Node { runtime, services })
    }

    /// Leaves the cluster (peers see a leave, not a failure), then stops
    /// the transport and the runtime.
    pub fn stop(self) -> ShutdownReport {
        self.services.stop();
        self.runtime.shutdown()
    }

    /// Stops without a word to the cluster, as a crash would: peers find
    /// out through failure detection. For tests and benchmarks.
    pub fn crash(self) -> ShutdownReport {
        self.services.transport.stop();
        self.runtime.shutdown()
    }

    /// The node's runtime: spawn processes on it.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

/// A node is its services on its runtime: `node.membership()`,
/// `node.dist()` and the rest are its [`Services`].
impl std::ops::Deref for Node {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl Services {
    /// Starts the services inside a simulated node (in its boot, or in
    /// `SimNode::enter`), on the simulated network host its driver is: the
    /// transport listens at `config.listen` and draws from `seed`, and the
    /// boot stamp comes from the virtual time, so that a run replays.
    /// `disk` is the node's simulated disk, which the simulation's driver
    /// keeps across the node's crashes (calling [`Disk::crash`] at each). The node id is the simulation's;
    /// `config.id` is not used.
    pub fn start_simulated(
        handle: &Handle,
        config: &NodeConfig,
        disk: Option<Disk>,
        seed: u64,
    ) -> Result<Services, NodeError> {
        config.check().map_err(NodeError::Config)?;
        let secret = config.cookie_secret().map_err(NodeError::Config)?;
        let mut transport_config = TransportConfig::new(config.name.clone(), Cookie::new(secret));
        transport_config.listen = config.listen;
        transport_config.channels = config.channel_specs();
        transport_config.seed = Some(seed);
        let transport =
            Transport::start_simulated(handle, transport_config).map_err(NodeError::Start)?;
        let advertise = config.advertise.unwrap_or(transport.local_addr());
        // Later at every restart, as a calendar stamp would be.
        let boot = handle.now().as_nanos() + 1;
        Services::start(
            handle,
            transport,
            config,
            advertise,
            disk,
            boot,
            seed ^ boot,
        )
    }

    /// The services a real or simulated node runs on its started
    /// transport: the fault rules of its configuration, and its peer
    /// service (started at `boot`, drawing from `draws`) and distribution
    /// under the system supervisor.
    fn start(
        handle: &Handle,
        transport: Transport,
        config: &NodeConfig,
        advertise: SocketAddr,
        disk: Option<Disk>,
        boot: u64,
        draws: u64,
    ) -> Result<Services, NodeError> {
        let channels = transport.channels().to_vec();
        for fault in &config.faults {
            let rule = fault.rule(&channels).map_err(NodeError::Config)?;
            transport.faults().add(rule);
        }
        let mesh = FullMesh::with_boot(
            handle,
            transport.clone(),
            advertise,
            config.seeds.clone(),
            config.failure_detector.clone(),
            boot,
            draws,
        )
        .map_err(|error| NodeError::Config(ConfigError::Invalid(error.to_string())))?;
        let dist = Dist::new(handle, transport.clone(), Arc::new(mesh.clone()));
        if let Some(kinds) = &config.spawn_allow {
            dist.factory().allow_only(kinds.iter().cloned());
        }
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(mesh.child_spec())
            .child(dist.child_spec())
            .start(handle)
            .map_err(NodeError::Spawn)?;
        Ok(Services {
            transport,
            mesh,
            dist,
            disk,
            supervisor,
        })
    }

    /// Leaves the cluster and stops the transport.
    fn stop(&self) {
        let _ = self.mesh.leave().blocking_recv();
        self.transport.stop();
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.transport.node()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.transport.name()
    }

    /// The address peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.mesh.me().addr
    }

    /// This node as the cluster knows it.
    pub fn member(&self) -> &Member {
        self.mesh.me()
    }

    /// The node's transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The node's peer service.
    pub fn membership(&self) -> &FullMesh {
        &self.mesh
    }

    /// The node's distribution: links, monitors and exit signals across
    /// nodes.
    pub fn dist(&self) -> &Dist {
        &self.dist
    }

    /// The node's durable state (`node.redb` under its data directory), if
    /// it has a data directory.
    pub fn disk(&self) -> Option<&Disk> {
        self.disk.as_ref()
    }

    /// The node's system supervisor: `peer_service` and `dist_service`
    /// are its children.
    pub fn supervisor(&self) -> SupervisorRef {
        self.supervisor
    }
}
