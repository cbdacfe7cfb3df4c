//! A fake of Railway's public GraphQL API, as strict as the real one where the autoscaler could
//! go wrong: every document is validated against Railway's schema (`schema/railway.graphql`, made
//! from the introspection JSON Railway's CLI generates its client from) with apollo-compiler, and
//! its variables coerced against the operation; a document or variables the schema rejects get
//! GraphQL `errors` (HTTP 400), as the real server answers. Auth: `Authorization: Bearer <token>`
//! or `Project-Access-Token: <token>`, else "Not Authorized". It knows one service instance in
//! one environment: `serviceInstance` answers its region, count and latest deployment manifest;
//! `environmentPatchCommit` must patch exactly that service's
//! `deploy.multiRegionConfig.<known region>.numReplicas` (1..=50, or null for 0), and changes the
//! count. `rate_limit_next` answers the next request 429 with `Retry-After`.

use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{web, HttpRequest, HttpResponse};
use apollo_compiler::executable::Selection;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::{json, Value};

use crate::helpers::serve_peer;

pub const SERVICE: &str = "svc-calls-0001";
pub const ENVIRONMENT: &str = "env-prod-0001";
pub const REGION: &str = "us-east4-eqdc4a";

pub fn schema() -> &'static Valid<Schema> {
    static SCHEMA: OnceLock<Valid<Schema>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_and_validate(
            include_str!("../../schema/railway.graphql"),
            "railway.graphql",
        )
        .expect("Railway's schema is valid SDL")
    })
}

/// What Railway's server would say about a request: the root field's name and its variables,
/// or the errors.
pub fn check(query: &str, variables: &Value) -> Result<(String, Value), String> {
    let schema = schema();
    let doc = ExecutableDocument::parse_and_validate(schema, query, "request.graphql")
        .map_err(|e| e.errors.to_string())?;
    let operation = doc.operations.get(None).map_err(|e| format!("{e:?}"))?;
    let values: apollo_compiler::response::JsonMap =
        serde_json::from_value(if variables.is_null() {
            json!({})
        } else {
            variables.clone()
        })
        .map_err(|e| format!("variables: {e}"))?;
    apollo_compiler::request::coerce_variable_values(schema, operation, &values)
        .map_err(|e| format!("variables: {e:?}"))?;
    let root = operation
        .selection_set
        .selections
        .iter()
        .find_map(|s| match s {
            Selection::Field(f) => Some(f.name.to_string()),
            _ => None,
        })
        .ok_or("no root field")?;
    Ok((root, variables.clone()))
}

#[derive(Default)]
struct State {
    token: String,
    project_token: bool,
    replicas: u32,
    /// Every accepted `environmentPatchCommit`'s variables, in order.
    patches: Vec<Value>,
    rate_limit_next: Option<u64>,
}

#[derive(Clone)]
pub struct FakeRailway {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeRailway {
    /// `project_token`: the token is a project token (`Project-Access-Token`), else Bearer.
    pub fn start(token: &str, project_token: bool, replicas: u32) -> Self {
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            project_token,
            replicas,
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let addr = serve_peer(move |cfg| {
            cfg.app_data(data.clone())
                .route("/graphql/v2", web::post().to(graphql));
        });
        FakeRailway {
            url: format!("http://{addr}/graphql/v2"),
            state,
        }
    }

    pub fn replicas(&self) -> u32 {
        self.state.lock().unwrap().replicas
    }

    pub fn patches(&self) -> Vec<Value> {
        self.state.lock().unwrap().patches.clone()
    }

    pub fn rate_limit_next(&self, retry_after_secs: u64) {
        self.state.lock().unwrap().rate_limit_next = Some(retry_after_secs);
    }
}

fn errors(status: u16, message: &str) -> HttpResponse {
    HttpResponse::build(status.try_into().unwrap()).json(json!({"errors": [{"message": message}]}))
}

async fn graphql(
    req: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    if let Some(wait) = s.rate_limit_next.take() {
        return HttpResponse::TooManyRequests()
            .insert_header(("retry-after", wait.to_string()))
            .insert_header(("x-ratelimit-remaining", "0"))
            .json(json!({"errors": [{"message": "Rate limit exceeded"}]}));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorized = if s.project_token {
        header("project-access-token").as_deref() == Some(s.token.as_str())
    } else {
        header("authorization") == Some(format!("Bearer {}", s.token))
    };
    if !authorized {
        return errors(200, "Not Authorized");
    }
    let query = body["query"].as_str().unwrap_or("");
    let (root, vars) = match check(query, &body["variables"]) {
        Ok(ok) => ok,
        Err(e) => return errors(400, &e),
    };
    match root.as_str() {
        "serviceInstance" => {
            if vars["serviceId"] != SERVICE || vars["environmentId"] != ENVIRONMENT {
                return errors(200, "ServiceInstance not found");
            }
            HttpResponse::Ok().json(json!({"data": {"serviceInstance": {
                "region": REGION,
                "numReplicas": s.replicas,
                "latestDeployment": {"id": "dep-1", "meta": {"serviceManifest": {"deploy": {
                    "multiRegionConfig": {REGION: {"numReplicas": s.replicas}}}}}},
            }}}))
        }
        "environmentPatchCommit" => {
            if vars["environmentId"] != ENVIRONMENT {
                return errors(200, "Environment not found");
            }
            let services = vars["patch"]["services"].as_object();
            let Some(services) = services.filter(|m| m.len() == 1 && m.contains_key(SERVICE))
            else {
                return errors(200, "patch must name the service");
            };
            let config = &services[SERVICE]["deploy"]["multiRegionConfig"];
            let Some(config) = config.as_object().filter(|c| c.len() == 1) else {
                return errors(200, "multiRegionConfig must hold the regions");
            };
            let n = match config.get(REGION) {
                Some(Value::Null) => 0,
                Some(r) => match r["numReplicas"].as_u64() {
                    Some(n) if (1..=50).contains(&n) => n as u32,
                    _ => return errors(200, "numReplicas must be 1 to 50"),
                },
                None => return errors(200, "unknown region"),
            };
            s.replicas = n;
            s.patches.push(vars);
            HttpResponse::Ok().json(json!({"data": {"environmentPatchCommit": "commit-1"}}))
        }
        other => errors(200, &format!("the fake does not serve {other}")),
    }
}
