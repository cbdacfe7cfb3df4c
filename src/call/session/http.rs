//! An app's HTTP requests (the voice agent's tools calling the business's systems). Each runs as
//! a future of the call's actor: it never blocks the call's audio, and the call ending cancels
//! it (a caller who hangs up leaves no request behind).

use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;

use super::{call_log, CallSession};
use crate::call::handler::{HttpAnswer, HttpPost, HTTP_BODY_MAX};

thread_local! {
    /// Per worker thread (awc's client is not `Send`); TCP_NODELAY like every client of ours.
    static CLIENT: awc::Client = crate::client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
}

impl CallSession {
    pub(super) fn http_post(&mut self, post: HttpPost, ctx: &mut Context<Self>) {
        let id = post.id;
        ctx.spawn(
            send(post)
                .into_actor(self)
                .map(move |answer, act, ctx| act.http_answered(id, answer, ctx)),
        );
    }

    fn http_answered(&mut self, id: u64, answer: HttpAnswer, ctx: &mut Context<Self>) {
        if self.is_closing() {
            return;
        }
        if let HttpAnswer::Failed(why) = &answer {
            call_log!(self, Debug, "app's HTTP request {id} failed: {why}");
        }
        let result = self.dispatch(ctx, |h, call| h.on_http(id, answer, call));
        self.after_handler(ctx, result);
    }
}

/// One POST within its timeout; the body read up to [`HTTP_BODY_MAX`] bytes.
async fn send(post: HttpPost) -> HttpAnswer {
    let request = CLIENT.with(|client| {
        let mut request = client.post(&post.url).timeout(post.timeout);
        for (name, value) in &post.headers {
            request = request.insert_header((name.as_str(), value.as_str()));
        }
        request.send_body(post.body)
    });
    let answer = async {
        let mut response = request.await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let room = HTTP_BODY_MAX - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == HTTP_BODY_MAX {
                break;
            }
        }
        Ok::<_, String>(HttpAnswer::Answered { status, body })
    };
    match tokio::time::timeout(post.timeout, answer).await {
        Err(_) => HttpAnswer::TimedOut,
        Ok(Err(why)) if why.to_lowercase().contains("timeout") => HttpAnswer::TimedOut,
        Ok(Err(why)) => HttpAnswer::Failed(why),
        Ok(Ok(answer)) => answer,
    }
}
