//! Socket options the standard library does not set, through `setsockopt`.
//!
//! A named unsafe module (system calls): each call hands the kernel a
//! pointer to a local that outlives it, with that local's size.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Caps the unsent bytes the kernel holds for a TCP socket
/// (`TCP_NOTSENT_LOWAT`): it takes no more from a writer while as many are
/// queued behind those in flight. See
/// [`ChannelSpec::unsent_low_water`](crate::ChannelSpec#structfield.unsent_low_water).
pub(crate) fn set_unsent_low_water(socket: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` lives across the call and the length given is its
    // size; `socket` is an open descriptor for the call's duration.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of_val(&value) as libc::socklen_t,
        )
    };
    succeeded(result)
}

/// The socket's `TCP_NOTSENT_LOWAT`; 0 when it follows the system's
/// setting.
#[cfg(test)]
pub(crate) fn unsent_low_water(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&value) as libc::socklen_t;
    // SAFETY: `value` and `len` live across the call; `len` holds
    // `value`'s size, which the kernel writes at most.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of_mut!(value).cast(),
            &mut len,
        )
    };
    succeeded(result).map(|()| value as u32)
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
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

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
    fn a_socket_that_is_not_tcp_is_refused() {
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(set_unsent_low_water(unix.as_fd(), 16 * 1024).is_err());
    }
}
