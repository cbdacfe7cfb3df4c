//! Per-connection TCP options that bound what one peer can cost the process and the kernel.

use std::time::Duration;

/// The kernel's send buffer per connection. Left to autotuning it grows to `tcp_wmem`'s maximum
/// (4 MiB on common kernels) for a peer that does not read, memory the container is charged
/// for; 64 KiB (the kernel doubles it) carries a call's ~11 KB/s many times over, even across
/// the Atlantic, and lets back-pressure reach the call's own bounded queue early.
pub const SOCKET_SEND_BUFFER: usize = 64 * 1024;
/// A connection whose data has waited this long unacknowledged, or behind a zero window, is
/// aborted by the kernel (TCP_USER_TIMEOUT). For a non-reading peer this only fires once we stop
/// reading it as well (a peer that keeps sending keeps the connection alive in the kernel's
/// eyes): a call closed for not reading therefore parks its inbound side unread (see
/// `session.rs`), and the kernel then cuts the connection. Without that, the connection would
/// stay open for as long as the peer kept flooding, its bytes read and thrown away.
pub const PEER_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection socket options (see the constants above); a failure only costs the bound.
pub fn tune(io: &dyn std::any::Any) {
    let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket
        .set_send_buffer_size(SOCKET_SEND_BUFFER)
        .and_then(|()| socket.set_tcp_user_timeout(Some(PEER_STALL_TIMEOUT)))
    {
        log::debug!("socket options not set: {e}");
    }
}
