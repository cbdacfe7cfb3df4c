//! TCP_NODELAY on the sockets callvisor opens itself (issue 18), on the real paths: an app's
//! upstream (`HANDLER=bridge`'s bot) and Twilio's REST API. Each peer runs in this process, so
//! while it serves callvisor's request it can find callvisor's end of the connection among this
//! process's file descriptors (the socket whose local address is the peer's remote address) and
//! record whether Nagle's algorithm is off there. With it on, a call's 20 ms frames wait for the
//! peer's delayed ACKs (a bot heard its echo 21-22 ms late at the median).

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use callvisor::config::HandlerKind;

use crate::helpers::*;

/// TCP_NODELAY on this process's socket whose local address is `local`; None if there is none.
fn nodelay_of_socket_at(local: SocketAddr) -> Option<bool> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if !std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            continue;
        }
        // SAFETY: the borrow only lives for two getsockopt calls. Should another test's thread
        // close `fd` meanwhile, they fail (EBADF) or read a socket that is not the one sought,
        // whose address then does not match: no memory is touched through it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        if socket.local_addr().ok().and_then(|a| a.as_socket()) == Some(local) {
            return socket.tcp_nodelay().ok();
        }
    }
    None
}

/// What each peer found on callvisor's end of its connection (None: not found).
#[derive(Default, Debug)]
struct Seen {
    upstream: Option<Option<bool>>,
    rest: Option<Option<bool>>,
}

type Shared = web::Data<Arc<Mutex<Seen>>>;

/// A bot that checks callvisor's socket, then asks for a hang-up (callvisor's REST request).
async fn bot(
    req: HttpRequest,
    body: web::Payload,
    seen: Shared,
) -> actix_web::Result<HttpResponse> {
    seen.lock().unwrap().upstream = Some(req.peer_addr().and_then(nodelay_of_socket_at));
    let (response, mut session, mut inbound) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        let _ = session.text(r#"{"event":"hangup"}"#).await;
        while let Some(Ok(_)) = inbound.recv().await {}
    });
    Ok(response)
}

/// Twilio's REST API, answering every call update with 200 once it has checked the socket.
async fn rest(req: HttpRequest, seen: Shared) -> HttpResponse {
    seen.lock().unwrap().rest = Some(req.peer_addr().and_then(nodelay_of_socket_at));
    HttpResponse::Ok().json(serde_json::json!({"sid": "CAnodelay", "status": "completed"}))
}

#[actix_web::test]
async fn the_sockets_callvisor_opens_itself_have_tcp_nodelay() {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let data = web::Data::new(seen.clone());
    let peer = serve_peer(move |cfg| {
        cfg.app_data(data.clone())
            .route("/bot", web::get().to(bot))
            .route("/{rest:.*}", web::post().to(rest));
    });
    let app = spawn_app_with(move |c| {
        c.handler = HandlerKind::Bridge {
            url: format!("ws://{peer}/bot"),
            connect_timeout: Duration::from_secs(5),
        };
        c.twilio_api_base_url = format!("http://{peer}");
        c.twilio_api_key = Some((
            "SK0123456789abcdef0123456789abcdef".into(),
            "key-secret".to_string().into(),
        ));
    })
    .await;

    let mut call = app.start_call("CAnodelay").await;
    // The bot's hang-up: callvisor asks Twilio's REST API to end the call, then closes.
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.upstream,
        Some(Some(true)),
        "the upstream socket (None inside: callvisor's end not found)"
    );
    assert_eq!(
        seen.rest,
        Some(Some(true)),
        "the REST socket (None inside: callvisor's end not found)"
    );
}
