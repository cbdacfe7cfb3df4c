//! `--twilio-api ADDR`: a stand-in for Twilio's REST `UpdateCall`, so that a whole local loop
//! (callsim → callvisor running a call app → its bot) runs without Twilio. Point the server's
//! `TWILIO_API_BASE_URL` at it.
//!
//! It answers as Twilio does where callsim can tell: 404 (code 20404) for a call that is not
//! live, 400 unless exactly one of `Status`, `Twiml`, `Url` is given, 401 without Basic auth.
//! An accepted update ends the call the way Twilio would: `Status=completed` (or TwiML that ends
//! in `<Hangup/>`) hangs up, `<Dial>` transfers; the call's stream then gets `stop` and the call
//! is reported as hung up or transferred by the app.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// What an app did to a call through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAction {
    HungUp { said: Option<String> },
    Transferred { to: String },
}

#[derive(Default)]
pub struct FakeApi {
    live: HashSet<String>,
    actions: HashMap<String, AppAction>,
}

pub type Shared = Arc<Mutex<FakeApi>>;

impl FakeApi {
    pub fn call_started(api: &Shared, call_sid: &str) {
        api.lock().unwrap().live.insert(call_sid.to_string());
    }

    pub fn call_ended(api: &Shared, call_sid: &str) {
        let mut api = api.lock().unwrap();
        api.live.remove(call_sid);
        api.actions.remove(call_sid);
    }

    /// What the app did to `call_sid`, if anything (taken: reported once).
    pub fn take_action(api: &Shared, call_sid: &str) -> Option<AppAction> {
        api.lock().unwrap().actions.remove(call_sid)
    }
}

/// Starts the fake API on `addr` in this system.
pub fn start(addr: SocketAddr) -> std::io::Result<Shared> {
    let api: Shared = Arc::default();
    let data = web::Data::new(api.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/2010-04-01/Accounts/{account}/Calls/{call}",
            web::post().to(update_call),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    actix_web::rt::spawn(server);
    Ok(api)
}

fn twilio_error(status: u16, code: u32, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(serde_json::json!({"code": code, "message": message, "status": status}))
}

async fn update_call(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Vec<(String, String)>>,
    api: web::Data<Shared>,
) -> HttpResponse {
    if !req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Basic "))
    {
        return twilio_error(401, 20003, "Authenticate");
    }
    let call_sid = path.1.trim_end_matches(".json").to_string();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (status, twiml, url) = (get("Status"), get("Twiml"), get("Url"));
    if [&status, &twiml, &url]
        .iter()
        .filter(|v| v.is_some())
        .count()
        != 1
    {
        return twilio_error(400, 21218, "exactly one of Status, Twiml or Url");
    }
    let action = match (status.as_deref(), twiml) {
        (Some("completed" | "canceled"), _) => AppAction::HungUp { said: None },
        (Some(_), _) => return twilio_error(400, 21218, "Invalid Status"),
        (None, Some(twiml)) => match callvisor::twilio::twiml::parse(&twiml) {
            Err(_) => return twilio_error(400, 12100, "Document parse failure"),
            Ok(verbs) => action_of(&twiml, &verbs),
        },
        (None, None) => AppAction::HungUp { said: None }, // a Url: callsim cannot follow it
    };
    let mut api = api.lock().unwrap();
    if !api.live.contains(&call_sid) {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    api.actions.insert(call_sid.clone(), action);
    HttpResponse::Ok().json(serde_json::json!({"sid": call_sid, "status": "in-progress"}))
}

/// What a `Twiml` update does to the call: a `<Dial>` transfers, anything else speaks what it
/// says and hangs up.
fn action_of(twiml: &str, verbs: &[callvisor::twilio::twiml::Verb]) -> AppAction {
    use callvisor::twilio::twiml::Verb;
    if let Some(to) = twiml
        .split("<Dial>")
        .nth(1)
        .and_then(|rest| rest.split("</Dial>").next())
    {
        return AppAction::Transferred { to: to.to_string() };
    }
    let said = verbs.iter().find_map(|v| match v {
        Verb::Say(text) => Some(text.clone()),
        _ => None,
    });
    AppAction::HungUp { said }
}
