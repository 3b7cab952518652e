//! What the `dist_*` suites share: nodes of this OS process joined into a
//! cluster over the real transport.

use std::net::SocketAddr;

use foundation::membership::PeerService;
use foundation::node::{Node, NodeConfig};

/// The configuration of test node `id`: one shard (tests run in parallel),
/// and the id given, since ids must differ among the runtimes alive in
/// this process.
pub(crate) fn config(id: u16, cookie: &str) -> NodeConfig {
    NodeConfig::new(format!("node-{id}"), cookie)
        .id(id)
        .shards(1)
}

/// Starts nodes from `configs`, the later ones joining through the first,
/// and waits until every node sees every other.
pub(crate) fn cluster(configs: Vec<NodeConfig>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::with_capacity(configs.len());
    let mut seed: Option<SocketAddr> = None;
    for mut config in configs {
        config.seeds.extend(seed);
        let node = Node::start(config).expect("the node starts");
        seed.get_or_insert(node.addr());
        nodes.push(node);
    }
    let others = nodes.len() - 1;
    super::eventually("the membership converges", || {
        nodes
            .iter()
            .all(|node| node.membership().members().len() == others)
    });
    nodes
}
