//! A fake of Twilio's REST `UpdateCall` (`POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json`), strict
//! where Twilio is: HTTP Basic auth with the right pair (401, code 20003, otherwise), a form body,
//! exactly one of `Status` / `Twiml` / `Url` (400, code 21218 style), `Status` only `completed` or
//! `canceled`, `Twiml` that parses as TwiML, and 404 (code 20404) for a call that is not live,
//! including one this fake already hung up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;

use crate::helpers::serve_peer;

/// One accepted update.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub account_sid: String,
    pub call_sid: String,
    pub form: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    /// `user:password` Twilio would accept.
    basic: String,
    live: HashSet<String>,
    /// Per call: answers 500 this many times before behaving.
    fail_first: HashMap<String, u32>,
    /// Per call: waits this long before answering.
    delay: HashMap<String, Duration>,
    updates: Vec<Update>,
    /// Every request, accepted or not: (call sid, status).
    requests: Vec<(String, u16)>,
}

#[derive(Clone)]
pub struct FakeTwilio {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl FakeTwilio {
    /// Starts the fake on a free port; it accepts `user`/`password` as Basic credentials.
    pub fn start(user: &str, password: &str) -> FakeTwilio {
        let state = Arc::new(Mutex::new(State {
            basic: format!("{user}:{password}"),
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let addr = serve_peer(move |cfg| {
            cfg.app_data(data.clone()).route(
                "/2010-04-01/Accounts/{account}/Calls/{call}",
                web::post().to(update_call),
            );
        });
        let base = format!("http://{addr}");
        FakeTwilio { base, state }
    }

    /// A call Twilio knows as in progress.
    pub fn live_call(&self, call_sid: &str) {
        self.state.lock().unwrap().live.insert(call_sid.into());
    }

    pub fn fail_first(&self, call_sid: &str, times: u32) {
        self.state
            .lock()
            .unwrap()
            .fail_first
            .insert(call_sid.into(), times);
    }

    pub fn delay(&self, call_sid: &str, by: Duration) {
        self.state.lock().unwrap().delay.insert(call_sid.into(), by);
    }

    pub fn updates(&self) -> Vec<Update> {
        self.state.lock().unwrap().updates.clone()
    }

    /// Status codes answered for `call_sid`, in order.
    pub fn answers(&self, call_sid: &str) -> Vec<u16> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(c, _)| c == call_sid)
            .map(|(_, s)| *s)
            .collect()
    }

    pub fn is_live(&self, call_sid: &str) -> bool {
        self.state.lock().unwrap().live.contains(call_sid)
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(
        serde_json::json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}),
    )
}

async fn update_call(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let (account_sid, call) = path.into_inner();
    let Some(call_sid) = call.strip_suffix(".json").map(str::to_string) else {
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    let delay = state.lock().unwrap().delay.get(&call_sid).copied();
    if let Some(delay) = delay {
        actix_web::rt::time::sleep(delay).await;
    }
    let response = answer(&req, &account_sid, &call_sid, &body, &state);
    state
        .lock()
        .unwrap()
        .requests
        .push((call_sid, response.status().as_u16()));
    response
}

fn answer(
    req: &HttpRequest,
    account_sid: &str,
    call_sid: &str,
    body: &[u8],
    state: &Mutex<State>,
) -> HttpResponse {
    let mut state = state.lock().unwrap();
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    if basic.as_deref() != Some(state.basic.as_str()) {
        return twilio_error(401, 20003, "Authenticate");
    }
    if let Some(left) = state.fail_first.get_mut(call_sid) {
        if *left > 0 {
            *left -= 1;
            return twilio_error(500, 20500, "Internal Server Error");
        }
    }
    let form_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return twilio_error(400, 20001, "Content-Type must be a form");
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return twilio_error(400, 20001, "Unreadable form");
    };
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let given = ["Status", "Twiml", "Url"]
        .iter()
        .filter(|k| get(k).is_some())
        .count();
    if given != 1 {
        return twilio_error(
            400,
            21218,
            "exactly one of Status, Twiml or Url must be given",
        );
    }
    if let Some(status) = get("Status") {
        if status != "completed" && status != "canceled" {
            return twilio_error(400, 21218, "Invalid Status");
        }
    }
    if let Some(twiml) = get("Twiml") {
        if callvisor::twilio::twiml::parse(twiml).is_err() {
            return twilio_error(400, 12100, "Document parse failure");
        }
    }
    if !state.live.contains(call_sid) {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    // A hang-up or a TwiML that ends in <Hangup/> ends the call; a transfer keeps it up.
    if get("Status").is_some() || get("Twiml").is_some_and(|t| t.contains("<Hangup/>")) {
        state.live.remove(call_sid);
    }
    state.updates.push(Update {
        account_sid: account_sid.into(),
        call_sid: call_sid.into(),
        form: form.clone(),
    });
    HttpResponse::Ok().json(serde_json::json!({"sid": call_sid, "status": "in-progress"}))
}
