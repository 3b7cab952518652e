//! A TCP proxy that the `transport_*` suites put between two nodes to cut
//! their connections at will: the dialling node is given the proxy's
//! address, and every connection it makes is forwarded to the real node by
//! two threads, one per direction.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// A TCP proxy to one address.
pub(crate) struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    /// Whether new connections are forwarded (else closed at once).
    open: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every forwarded connection, to cut them.
    links: Mutex<Vec<TcpStream>>,
    /// Bytes forwarded towards the target, and where to cut.
    upstream: Mutex<Upstream>,
    cuts: AtomicUsize,
}

#[derive(Default)]
struct Upstream {
    forwarded: u64,
    cut_at: VecDeque<u64>,
}

impl Proxy {
    /// A proxy to `target`, listening on a free loopback port, open.
    pub(crate) fn new(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target,
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            upstream: Mutex::new(Upstream::default()),
            cuts: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        let acceptor = thread::spawn(move || accept(&listener, &accepting));
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where the dialling node should connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection once the bytes forwarded towards the target
    /// (over all connections, handshakes included) reach each of
    /// `points`, in the middle of whatever frame is crossing then.
    pub(crate) fn cut_at(&self, points: &[u64]) {
        let mut upstream = self.shared.upstream();
        upstream.cut_at = points.iter().copied().collect();
        upstream.cut_at.make_contiguous().sort_unstable();
    }

    /// Cuts every connection now.
    pub(crate) fn cut(&self) {
        self.shared.cut();
    }

    /// Closes every connection and every new one at once, until
    /// [`Proxy::open`].
    pub(crate) fn close(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        self.shared.cut();
    }

    /// Forwards new connections again.
    pub(crate) fn open(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    /// How many times the connections were cut.
    pub(crate) fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Bytes forwarded towards the target so far.
    pub(crate) fn forwarded(&self) -> u64 {
        self.shared.upstream().forwarded
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.cut();
        // Wake the acceptor from its blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn upstream(&self) -> std::sync::MutexGuard<'_, Upstream> {
        self.upstream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cut(&self) {
        let links = std::mem::take(&mut *self.links.lock().unwrap_or_else(PoisonError::into_inner));
        for link in &links {
            let _ = link.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }

    /// Accounts `n` bytes about to go upstream: how many of them to
    /// forward, and whether to cut after them.
    fn account(&self, n: usize) -> (usize, bool) {
        let mut upstream = self.upstream();
        let after = upstream.forwarded + n as u64;
        match upstream.cut_at.front().copied() {
            Some(point) if point <= after => {
                upstream.cut_at.pop_front();
                let allowed = point.saturating_sub(upstream.forwarded) as usize;
                upstream.forwarded += allowed as u64;
                (allowed, true)
            }
            _ => {
                upstream.forwarded = after;
                (n, false)
            }
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.open.load(Ordering::SeqCst) {
            continue; // Dropped: closed at once.
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(client_in), Ok(server_out), Ok(client_link), Ok(server_link)) = clones else {
            continue;
        };
        shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([client_link, server_link]);
        let upstream = shared.clone();
        thread::spawn(move || pump(client_in, server_out, Some(&upstream)));
        thread::spawn(move || pump(server, client, None));
    }
}

/// Copies `from` to `to` until either ends; bytes towards the target are
/// accounted in `upstream`, which may cut every connection.
fn pump(mut from: TcpStream, mut to: TcpStream, upstream: Option<&Shared>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (allowed, cut) = upstream.map_or((n, false), |shared| shared.account(n));
        if to.write_all(&buffer[..allowed]).is_err() {
            break;
        }
        if cut {
            if let Some(shared) = upstream {
                shared.cut();
            }
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
