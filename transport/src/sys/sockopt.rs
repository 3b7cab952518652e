//! Socket options the standard library does not set, through `setsockopt`,
//! and a TCP connect that sets them before the handshake.
//!
//! A named unsafe module (system calls): each call hands the kernel a
//! pointer to a local that outlives it, with that local's size.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Starts connecting a new non-blocking TCP socket to `addr`, after
/// `prepare` set its options: those that must be in place before the
/// connection is established go there, such as the congestion control
/// (which sets up its pacing when the connection is established).
pub(crate) fn connect(
    addr: SocketAddr,
    prepare: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = tcp_socket(addr)?;
    prepare(socket.as_fd())?;
    match start_connect(socket.as_fd(), addr) {
        Err(error) if error.raw_os_error() != Some(libc::EINPROGRESS) => Err(error),
        _ => Ok(TcpStream::from(socket)),
    }
}

/// A new, unconnected, non-blocking TCP socket of `addr`'s family.
fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: the call takes no pointers.
    let fd = unsafe { libc::socket(family, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `connect(2)` of `socket` to `addr`; on a non-blocking socket it fails
/// with `EINPROGRESS` while the handshake goes on.
fn start_connect(socket: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(addr) => connect_to(
            socket,
            &libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(addr.ip().octets()),
                },
                sin_zero: [0; 8],
            },
        ),
        SocketAddr::V6(addr) => connect_to(
            socket,
            &libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: addr.port().to_be(),
                sin6_flowinfo: addr.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: addr.ip().octets(),
                },
                sin6_scope_id: addr.scope_id(),
            },
        ),
    }
}

/// `connect(2)` of `socket` to `raw`, a C socket address (`sockaddr_in` or
/// `sockaddr_in6`).
fn connect_to<A>(socket: BorrowedFd<'_>, raw: &A) -> io::Result<()> {
    // SAFETY: `raw` lives across the call and the length given is its
    // size; the kernel reads at most that many bytes.
    let result = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::from_ref(raw).cast(),
            std::mem::size_of_val(raw) as libc::socklen_t,
        )
    };
    succeeded(result)
}

/// Whether this process may give TCP sockets the congestion control
/// `name`: the kernel has it and allows it (or the process may choose any).
pub(crate) fn congestion_control_available(name: &str) -> io::Result<()> {
    let socket = tcp_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    set_congestion_control(socket.as_fd(), name)
}

/// Gives the socket the congestion control `name` (`TCP_CONGESTION`).
pub(crate) fn set_congestion_control(socket: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    set_option(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_CONGESTION,
        name.as_bytes(),
    )
}

/// The socket's congestion control.
#[cfg(test)]
pub(crate) fn congestion_control(socket: BorrowedFd<'_>) -> io::Result<String> {
    let mut name = [0_u8; 16];
    let len = tcp_option(socket, libc::TCP_CONGESTION, &mut name)?;
    let name = &name[..len];
    let end = name.iter().position(|&b| b == 0).unwrap_or(len);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Caps the unsent bytes the kernel holds for a TCP socket
/// (`TCP_NOTSENT_LOWAT`): it takes no more from a writer while as many are
/// queued behind those in flight. See
/// [`ChannelSpec::unsent_low_water`](crate::ChannelSpec#structfield.unsent_low_water).
pub(crate) fn set_unsent_low_water(socket: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        &value.to_ne_bytes(),
    )
}

/// The socket's `TCP_NOTSENT_LOWAT`; 0 when it follows the system's
/// setting.
#[cfg(test)]
pub(crate) fn unsent_low_water(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut value = [0_u8; std::mem::size_of::<libc::c_int>()];
    tcp_option(socket, libc::TCP_NOTSENT_LOWAT, &mut value)?;
    Ok(libc::c_int::from_ne_bytes(value) as u32)
}

/// Sets the socket's send buffer (`SO_SNDBUF`; the kernel doubles it and
/// caps it at `net.core.wmem_max`).
#[cfg(test)]
pub(crate) fn set_send_buffer(socket: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(
        socket,
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        &value.to_ne_bytes(),
    )
}

/// `setsockopt(2)` of option `option` at `level` to `value`.
fn set_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and the length given is its
    // length; the kernel reads at most that many bytes.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    succeeded(result)
}

/// `getsockopt(2)` of the TCP option `option` into `value`; the bytes
/// written.
#[cfg(test)]
fn tcp_option(socket: BorrowedFd<'_>, option: libc::c_int, value: &mut [u8]) -> io::Result<usize> {
    let mut len = value.len() as libc::socklen_t;
    // SAFETY: `value` and `len` live across the call; `len` holds
    // `value`'s length, which the kernel writes at most.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    succeeded(result).map(|()| len as usize)
}

/// A socket call's result: 0, or -1 with the reason in `errno`.
fn succeeded(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn the_unsent_low_water_set_is_the_one_read_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(unsent_low_water(stream.as_fd()).unwrap(), 0);
        set_unsent_low_water(stream.as_fd(), 16 * 1024).unwrap();
        assert_eq!(unsent_low_water(stream.as_fd()).unwrap(), 16 * 1024);
    }

    #[test]
    fn a_connection_has_the_congestion_control_set_before_it_connects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, |socket| set_congestion_control(socket, "reno")).unwrap();
        let _accepted = listener.accept().unwrap();
        assert_eq!(congestion_control(stream.as_fd()).unwrap(), "reno");
        assert!(congestion_control_available("reno").is_ok());
    }

    #[test]
    fn an_ipv6_connection_is_made_the_same_way() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // No IPv6 loopback on this machine.
        };
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, |socket| set_congestion_control(socket, "reno")).unwrap();
        let (_accepted, from) = listener.accept().unwrap();
        assert_eq!(stream.local_addr().unwrap(), from);
        assert_eq!(stream.peer_addr().unwrap(), addr);
        assert_eq!(congestion_control(stream.as_fd()).unwrap(), "reno");
    }

    #[test]
    fn a_congestion_control_the_kernel_lacks_is_refused() {
        let error = congestion_control_available("no-such-cc").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(connect(addr, |socket| set_congestion_control(socket, "no-such-cc")).is_err());
    }

    #[test]
    fn a_socket_that_is_not_tcp_is_refused() {
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(set_unsent_low_water(unix.as_fd(), 16 * 1024).is_err());
    }
}
