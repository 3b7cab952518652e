//! A node's configuration: a TOML file or a builder, checked before the
//! node starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use foundation_sched::NodeId;
use std::time::Duration;

use foundation_transport::fault::{Fault, FaultRule};
use foundation_transport::{ChannelId, ChannelSpec, Delivery};
use serde::{Deserialize, Serialize};

use crate::membership::FailureDetector;

/// How a node is set up. Build it in code or read it from TOML:
///
/// ```
/// use foundation::node::NodeConfig;
///
/// let config = NodeConfig::from_toml(r#"
///     name = "alpha"
///     listen = "127.0.0.1:4370"
///     cookie = "cluster secret"
///     seeds = ["127.0.0.1:4371"]
///     shards = 2
///
///     [failure_detector]
///     suspicion_timeout = 500
///
///     [channels.data]
///     parallelism = 4
/// "#).unwrap();
/// assert_eq!(config.name, "alpha");
/// assert_eq!(config.failure_detector.suspicion_timeout.as_millis(), 500);
///
/// // The same in code.
/// let built = NodeConfig::new("alpha", "cluster secret")
///     .listen("127.0.0.1:4370".parse().unwrap())
///     .seed("127.0.0.1:4371".parse().unwrap())
///     .shards(2);
/// assert_eq!(built.seeds, config.seeds);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, shown to peers and in logs.
    pub name: String,
    /// The node's id, unique in the cluster (1 to 65535). When absent it
    /// is derived from the name ([`NodeConfig::node_id`]); give ids
    /// explicitly in clusters of more than a few dozen nodes, where two
    /// names may hash alike.
    #[serde(default)]
    pub id: Option<u16>,
    /// Where the transport listens (default `127.0.0.1:0`, any free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address peers dial, when it differs from `listen` (listening on
    /// `0.0.0.0`, or behind a NAT).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The cluster's shared secret. Prefer `cookie_file`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A file holding the cluster's secret (surrounding whitespace is
    /// trimmed).
    #[serde(default)]
    pub cookie_file: Option<PathBuf>,
    /// Addresses of nodes of the cluster to join through; none for the
    /// first node.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Where the node keeps durable state (created at start if missing):
    /// its database, `node.redb` ([`crate::storage::Disk`]).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Shards (threads) of the runtime (default: one per core).
    #[serde(default)]
    pub shards: Option<usize>,
    /// The cores shards are pinned to, round-robin (default: every core,
    /// from the first). Nodes sharing a machine should be given different
    /// cores.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// SWIM timings.
    #[serde(default)]
    pub failure_detector: FailureDetector,
    /// Options of the default channels, by name, and extra channels.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelOptions>,
    /// The process kinds other nodes may spawn here; absent, every kind
    /// registered with the node's [`Factory`](crate::dist::Factory).
    #[serde(default)]
    pub spawn_allow: Option<Vec<String>>,
    /// Fault rules the node applies from its start, for chaos runs
    /// ([`crate::fault`]).
    #[serde(default)]
    pub faults: Vec<FaultConfig>,
}

/// A fault rule in a configuration file:
///
/// ```toml
/// [[faults]]
/// fault = "drop"        # drop, duplicate, delay or partition
/// probability = 0.1     # drop and duplicate
/// from = 2              # node ids; leave out to match any
/// channel = "data"      # a channel name; leave out to match any
///
/// [[faults]]
/// fault = "delay"
/// min_ms = 5            # delay: held back for min_ms..=max_ms
/// max_ms = 20
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// `drop`, `duplicate`, `delay` or `partition`.
    pub fault: String,
    /// For `drop` and `duplicate`: how likely, `0.0..=1.0`.
    #[serde(default)]
    pub probability: Option<f64>,
    /// For `delay`: the shortest hold, in milliseconds.
    #[serde(default)]
    pub min_ms: Option<u64>,
    /// For `delay`: the longest hold, in milliseconds.
    #[serde(default)]
    pub max_ms: Option<u64>,
    /// The sending node the rule matches; any if absent.
    #[serde(default)]
    pub from: Option<u16>,
    /// The receiving node the rule matches; any if absent.
    #[serde(default)]
    pub to: Option<u16>,
    /// The channel the rule matches, by name; any if absent.
    #[serde(default)]
    pub channel: Option<String>,
}

impl FaultConfig {
    /// The rule, given the node's channels (in [`ChannelId`] order).
    pub fn rule(&self, channels: &[ChannelSpec]) -> Result<FaultRule, ConfigError> {
        let invalid =
            |problem: &str| ConfigError::Invalid(format!("fault {:?}: {problem}", self.fault));
        let probability = || match self.probability {
            Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
            Some(_) => Err(invalid("the probability must be within 0 and 1")),
            None => Err(invalid("needs a probability")),
        };
        let fault = match self.fault.as_str() {
            "drop" => Fault::Drop(probability()?),
            "duplicate" => Fault::Duplicate(probability()?),
            "delay" => match (self.min_ms, self.max_ms) {
                (Some(min), Some(max)) if min <= max => Fault::Delay {
                    min: Duration::from_millis(min),
                    max: Duration::from_millis(max),
                },
                _ => return Err(invalid("needs min_ms <= max_ms")),
            },
            "partition" => Fault::Partition,
            _ => return Err(invalid("not drop, duplicate, delay or partition")),
        };
        let mut rule = FaultRule::new(fault);
        if let Some(from) = self.from {
            rule = rule.from(NodeId(from));
        }
        if let Some(to) = self.to {
            rule = rule.to(NodeId(to));
        }
        if let Some(name) = &self.channel {
            let at = channels
                .iter()
                .position(|spec| spec.name == *name)
                .ok_or_else(|| invalid(&format!("no channel {name:?}")))?;
            rule = rule.channel(ChannelId(at as u16));
        }
        Ok(rule)
    }
}

/// Options of one channel; what is left out keeps its default
/// ([`ChannelSpec::defaults`] for the default channels, [`ChannelSpec::new`]
/// for others).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelOptions {
    /// Priority, 0 highest.
    pub priority: Option<u8>,
    /// Connections per peer.
    pub parallelism: Option<u16>,
    /// `true` for acknowledged delivery (retransmitted after a reconnect,
    /// de-duplicated), `false` for best effort.
    pub acknowledged: Option<bool>,
    /// Largest frame, in bytes.
    pub max_frame: Option<u32>,
    /// Largest message, in bytes.
    pub max_message: Option<usize>,
    /// Credit window per connection, in bytes.
    pub credit_window: Option<u32>,
    /// Most bytes one send hands the kernel.
    pub send_slice: Option<u32>,
    /// Whether the channel is background traffic: beside other traffic,
    /// its sends and in-place receives run off the shard's thread (io_uring).
    pub background: Option<bool>,
}

/// A configuration that cannot start a node.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The TOML does not describe a node configuration.
    Parse(String),
    /// Neither `cookie` nor `cookie_file`, or both.
    Cookie(String),
    /// A value out of range or inconsistent with another.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(path, error) => write!(f, "cannot read {}: {error}", path.display()),
            ConfigError::Parse(error) => write!(f, "bad node configuration: {error}"),
            ConfigError::Cookie(problem) => write!(f, "cookie: {problem}"),
            ConfigError::Invalid(problem) => write!(f, "bad node configuration: {problem}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl NodeConfig {
    /// A configuration with `name`, `cookie` and defaults for the rest.
    pub fn new(name: impl Into<String>, cookie: impl Into<String>) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            id: None,
            listen: default_listen(),
            advertise: None,
            cookie: Some(cookie.into()),
            cookie_file: None,
            seeds: Vec::new(),
            data_dir: None,
            shards: None,
            cores: None,
            failure_detector: FailureDetector::default(),
            channels: BTreeMap::new(),
            spawn_allow: None,
            faults: Vec::new(),
        }
    }

    /// Parses TOML (the fields of [`NodeConfig`]).
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))
    }

    /// Reads and parses a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        NodeConfig::from_toml(&text)
    }

    /// Sets the node id.
    pub fn id(mut self, id: u16) -> NodeConfig {
        self.id = Some(id);
        self
    }

    /// Sets the listen address.
    pub fn listen(mut self, addr: SocketAddr) -> NodeConfig {
        self.listen = addr;
        self
    }

    /// Sets the address peers dial.
    pub fn advertise(mut self, addr: SocketAddr) -> NodeConfig {
        self.advertise = Some(addr);
        self
    }

    /// Adds a seed.
    pub fn seed(mut self, addr: SocketAddr) -> NodeConfig {
        self.seeds.push(addr);
        self
    }

    /// Sets the shard count.
    pub fn shards(mut self, shards: usize) -> NodeConfig {
        self.shards = Some(shards);
        self
    }

    /// Sets the cores the shards are pinned to.
    pub fn cores(mut self, cores: Vec<usize>) -> NodeConfig {
        self.cores = Some(cores);
        self
    }

    /// Sets the data directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> NodeConfig {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the SWIM timings.
    pub fn failure_detector(mut self, timings: FailureDetector) -> NodeConfig {
        self.failure_detector = timings;
        self
    }

    /// Sets the spawn allow-list.
    pub fn spawn_allow(mut self, kinds: impl IntoIterator<Item = impl Into<String>>) -> NodeConfig {
        self.spawn_allow = Some(kinds.into_iter().map(Into::into).collect());
        self
    }

    /// Adds a fault rule.
    pub fn fault(mut self, fault: FaultConfig) -> NodeConfig {
        self.faults.push(fault);
        self
    }

    /// Sets the options of channel `name` (a default channel's, or a new
    /// channel's).
    pub fn channel(mut self, name: impl Into<String>, options: ChannelOptions) -> NodeConfig {
        self.channels.insert(name.into(), options);
        self
    }

    /// The node id: the configured one, or one derived from the name
    /// (FNV-1a folded to 16 bits; never 0).
    pub fn node_id(&self) -> NodeId {
        if let Some(id) = self.id {
            return NodeId(id);
        }
        let hash = crate::dist::name_hash(&self.name);
        let folded = (hash ^ (hash >> 16) ^ (hash >> 32) ^ (hash >> 48)) as u16;
        NodeId(folded.max(1))
    }

    /// The cluster's secret, from `cookie` or `cookie_file`.
    pub fn cookie_secret(&self) -> Result<String, ConfigError> {
        match (&self.cookie, &self.cookie_file) {
            (Some(cookie), None) => Ok(cookie.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Cookie(format!("{}: {e}", path.display())))?;
                Ok(text.trim().to_owned())
            }
            (None, None) => Err(ConfigError::Cookie("give cookie or cookie_file".into())),
            (Some(_), Some(_)) => Err(ConfigError::Cookie(
                "give cookie or cookie_file, not both".into(),
            )),
        }
        .and_then(|secret| {
            if secret.is_empty() {
                Err(ConfigError::Cookie("the secret is empty".into()))
            } else {
                Ok(secret)
            }
        })
    }

    /// The channels: the defaults with their configured options, then the
    /// extra channels in name order.
    pub fn channel_specs(&self) -> Vec<ChannelSpec> {
        let mut specs = ChannelSpec::defaults();
        for (name, options) in &self.channels {
            let at = match specs.iter().position(|spec| spec.name == *name) {
                Some(at) => at,
                None => {
                    specs.push(ChannelSpec::new(name.clone()));
                    specs.len() - 1
                }
            };
            options.apply(&mut specs[at]);
        }
        specs
    }

    /// Checks what can be checked before starting.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::Invalid("the node has no name".into()));
        }
        if self.id == Some(0) {
            return Err(ConfigError::Invalid("node id 0 is reserved".into()));
        }
        if self
            .shards
            .is_some_and(|shards| !(1..=255).contains(&shards))
        {
            return Err(ConfigError::Invalid("shards must be 1 to 255".into()));
        }
        if self.cores.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::Invalid("an empty core list".into()));
        }
        let channels = self.channel_specs();
        if channels[usize::from(ChannelId::CONTROL.0)].parallelism != 1 {
            // Calls and signals rely on its order: a monitor before the
            // request after it, an answer before its server's `Down`.
            return Err(ConfigError::Invalid(
                "the control channel must have one connection per peer".into(),
            ));
        }
        let dialable = self.advertise.unwrap_or(self.listen);
        if dialable.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "peers cannot dial {dialable}: set advertise"
            )));
        }
        self.failure_detector
            .check()
            .map_err(|problem| ConfigError::Invalid(format!("failure_detector: {problem}")))?;
        for fault in &self.faults {
            fault.rule(&channels)?;
        }
        self.cookie_secret().map(drop)
    }
}

impl ChannelOptions {
    fn apply(&self, spec: &mut ChannelSpec) {
        let ChannelOptions {
            priority,
            parallelism,
            acknowledged,
            max_frame,
            max_message,
            credit_window,
            send_slice,
            background,
        } = self.clone();
        let mut set = std::mem::replace(spec, ChannelSpec::new(""));
        if let Some(value) = priority {
            set = set.priority(value);
        }
        if let Some(value) = parallelism {
            set = set.parallelism(value);
        }
        if let Some(value) = acknowledged {
            set = set.delivery(if value {
                Delivery::Acknowledged
            } else {
                Delivery::BestEffort
            });
        }
        if let Some(value) = max_frame {
            set = set.max_frame(value);
        }
        if let Some(value) = max_message {
            set = set.max_message(value);
        }
        if let Some(value) = credit_window {
            set = set.credit_window(value);
        }
        if let Some(value) = send_slice {
            set = set.send_slice(value);
        }
        if let Some(value) = background {
            set = set.background(value);
        }
        *spec = set;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_unknown_keys_are_refused() {
        let config = NodeConfig::from_toml(
            r#"
            name = "beta"
            id = 7
            listen = "127.0.0.1:5000"
            cookie = "s"
            seeds = ["127.0.0.1:5001", "127.0.0.1:5002"]
            data_dir = "/tmp/beta"
            shards = 1
            [failure_detector]
            probe_period = 200
            probe_timeout = 50
            indirect_probes = 2
            suspicion_timeout = 600
            [channels.bulk]
            parallelism = 2
            acknowledged = true
            [channels.metrics]
            priority = 2
            "#,
        )
        .unwrap();
        assert_eq!(config.node_id(), NodeId(7));
        assert_eq!(config.seeds.len(), 2);
        config.check().unwrap();
        let specs = config.channel_specs();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["control", "data", "gossip", "bulk", "metrics"]);
        assert_eq!(specs[3].parallelism, 2);
        assert_eq!(specs[3].delivery, Delivery::Acknowledged);
        assert_eq!(specs[3].max_frame, ChannelSpec::defaults()[3].max_frame);

        let typo = NodeConfig::from_toml("name = \"x\"\ncookie = \"s\"\nseed = []\n");
        assert!(matches!(typo, Err(ConfigError::Parse(e)) if e.contains("seed")));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let base = || NodeConfig::new("n", "s");
        assert!(base().check().is_ok());
        let invalid = |config: NodeConfig| match config.check() {
            Err(ConfigError::Invalid(problem)) => problem,
            other => panic!("{other:?}"),
        };
        assert!(invalid(base().id(0)).contains("reserved"));
        assert!(invalid(base().shards(0)).contains("shards"));
        assert!(invalid(base().listen("0.0.0.0:1".parse().unwrap())).contains("advertise"));
        let mut slow = FailureDetector::default();
        slow.probe_timeout = slow.probe_period;
        assert!(invalid(base().failure_detector(slow)).contains("probe timeout"));
        let mut no_cookie = base();
        no_cookie.cookie = None;
        assert!(matches!(no_cookie.check(), Err(ConfigError::Cookie(_))));
    }

    #[test]
    fn fault_rules_parse_and_bad_ones_are_refused() {
        let config = NodeConfig::from_toml(
            r#"
            name = "x"
            cookie = "s"
            [[faults]]
            fault = "drop"
            probability = 0.25
            from = 3
            channel = "gossip"
            [[faults]]
            fault = "delay"
            min_ms = 5
            max_ms = 9
            "#,
        )
        .unwrap();
        config.check().unwrap();
        let channels = config.channel_specs();
        let drop = config.faults[0].rule(&channels).unwrap();
        assert!(drop.matches(NodeId(3), NodeId(9), ChannelId::GOSSIP));
        assert!(!drop.matches(NodeId(3), NodeId(9), ChannelId::DATA));
        assert_eq!(
            config.faults[1].rule(&channels).unwrap(),
            FaultRule::new(Fault::Delay {
                min: Duration::from_millis(5),
                max: Duration::from_millis(9)
            })
        );
        let bad = |text: &str| {
            let config =
                NodeConfig::from_toml(&format!("name = \"x\"\ncookie = \"s\"\n{text}")).unwrap();
            match config.check() {
                Err(ConfigError::Invalid(problem)) => problem,
                other => panic!("{other:?}"),
            }
        };
        assert!(bad("[[faults]]\nfault = \"drop\"\nprobability = 2.0").contains("probability"));
        assert!(bad("[[faults]]\nfault = \"melt\"").contains("not drop"));
        assert!(bad("[[faults]]\nfault = \"delay\"\nmin_ms = 9\nmax_ms = 1").contains("min_ms"));
        assert!(bad("[[faults]]\nfault = \"partition\"\nchannel = \"nope\"").contains("nope"));
    }

    #[test]
    fn derived_ids_are_stable_and_never_zero() {
        let id = NodeConfig::new("alpha", "s").node_id();
        assert_eq!(id, NodeConfig::new("alpha", "t").node_id());
        assert_ne!(id, NodeConfig::new("beta", "s").node_id());
        assert_ne!(id, NodeId(0));
    }
}
