//! `callvisor autoscale` (the real binary) against a fake of Railway's GraphQL API that checks
//! every document against Railway's schema, observing a real call server.

use std::time::Duration;

use actix_web::rt::time::sleep;
use serde_json::{json, Value};

use crate::fake_railway::{check, FakeRailway, ENVIRONMENT, REGION, SERVICE};
use crate::helpers::*;

#[test]
fn the_documents_the_controller_sends_are_valid_against_railways_schema() {
    use callvisor::autoscale::railway::{patch_variables, Regions, PATCH_MUTATION, REPLICAS_QUERY};
    let (root, _) = check(
        REPLICAS_QUERY,
        &json!({"serviceId": SERVICE, "environmentId": ENVIRONMENT}),
    )
    .unwrap();
    assert_eq!(root, "serviceInstance");
    let regions = Regions([(REGION.to_string(), 3)].into_iter().collect());
    let vars = patch_variables(
        SERVICE,
        ENVIRONMENT,
        &regions,
        "callvisor autoscale: 2 -> 3",
    );
    assert_eq!(
        check(PATCH_MUTATION, &vars).unwrap().0,
        "environmentPatchCommit"
    );

    // The fake rejects what Railway's schema rejects: a field that does not exist, an argument
    // of the wrong type, a variable missing or of the wrong type.
    for (query, vars) in [
        (
            REPLICAS_QUERY.replace("numReplicas", "replicaCount"),
            json!({"serviceId": "s", "environmentId": "e"}),
        ),
        (REPLICAS_QUERY.to_string(), json!({"serviceId": "s"})),
        (
            REPLICAS_QUERY.to_string(),
            json!({"serviceId": 7, "environmentId": "e"}),
        ),
        (
            "mutation { serviceInstanceUpdate(serviceId: \"s\", input: {replicas: 2}) }"
                .to_string(),
            json!({}),
        ),
        (PATCH_MUTATION.to_string(), json!({"patch": {}})),
    ] {
        assert!(check(&query, &vars).is_err(), "accepted: {query} {vars}");
    }
}

async fn controller(railway: &FakeRailway, target: &str, extra: &[(&str, &str)]) -> BinaryApp {
    let mut env = vec![
        ("AUTOSCALE_TARGET_URL", target),
        ("RAILWAY_PROJECT_TOKEN", "proj-token"),
        ("AUTOSCALE_SERVICE_ID", SERVICE),
        ("RAILWAY_ENVIRONMENT_ID", ENVIRONMENT),
        ("RAILWAY_API_URL", railway.url.as_str()),
        ("MIN_REPLICAS", "1"),
        ("MAX_REPLICAS", "3"),
        ("AUTOSCALE_INTERVAL_SECS", "1"),
        ("AUTOSCALE_COOLDOWN_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    spawn_binary_with_args(&["autoscale"], &env).await
}

/// Polls the controller's `/` until `ok` holds; returns that answer.
async fn wait_status(ctl: &BinaryApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status = ctl.app.health().await;
        if ok(&status) {
            return status;
        }
        if std::time::Instant::now() > deadline {
            panic!("the controller never showed {what}: {status:#}");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn live_calls_scale_the_service_out_and_unseen_replicas_keep_it_from_scaling_in() {
    let app = spawn_app_with(|c| c.limit_concurrency = 10).await;
    let railway = FakeRailway::start("proj-token", true, 1);
    let ctl = controller(&railway, &app.base, &[]).await;
    // No calls on one replica: hold at MIN.
    let idle = wait_status(&ctl, "a decision", |s| s["last_decision"].is_object()).await;
    assert_eq!(idle["last_decision"]["action"], "hold", "{idle:#}");
    assert_eq!(idle["current_replicas"], 1);

    // 8 live calls, 5 per replica at 50 % of 10: two replicas, asked for at once.
    let mut calls = Vec::new();
    for i in 0..8 {
        calls.push(app.start_call(&format!("CAscale{i}")).await);
    }
    app.wait_for_active(8).await;
    let out = wait_status(&ctl, "a scale-out", |s| s["last_change"]["applied"] == true).await;
    assert_eq!(out["last_change"]["action"], "scale_out", "{out:#}");
    assert_eq!(
        (
            out["last_change"]["from"].as_u64(),
            out["last_change"]["to"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let patch = &railway.patches()[0];
    assert_eq!(
        patch["patch"]["services"][SERVICE]["deploy"]["multiRegionConfig"][REGION],
        json!({"numReplicas": 2})
    );
    assert_eq!(railway.replicas(), 2);
    let seen = &out["observation"]["replicas"][0];
    assert_eq!(
        (seen["active_calls"].as_u64(), seen["limit"].as_u64()),
        (Some(8), Some(10))
    );

    // The calls end, but Railway runs 2 replicas and only one ever answers (the second one is
    // this test's fiction): unseen, so counted full (10 calls), and no scale-in.
    drop(calls);
    app.wait_for_active(0).await;
    let intervals = wait_status(&ctl, "an interval", |_| true).await["intervals"]
        .as_u64()
        .unwrap();
    let held = wait_status(&ctl, "three more intervals", |s| {
        s["intervals"].as_u64().unwrap() >= intervals + 3
            && s["observation"]["replicas"][0]["active_calls"] == 0
    })
    .await;
    assert_eq!(held["last_decision"]["action"], "hold", "{held:#}");
    assert!(
        held["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("1 unseen counted full"),
        "{held:#}"
    );
    assert_eq!(railway.patches().len(), 1, "no scale-in on a partial view");

    let m = ctl.app.get("/metrics").await.1;
    assert!(m.contains("callvisor_autoscale_replicas_current 2"), "{m}");
    assert!(
        m.contains("callvisor_autoscale_decisions_total{action=\"scale_out\"} 1"),
        "{m}"
    );
}

/// A balancer of the test's own in front of `backends`' `/` (round robin), as Railway's edge
/// is in front of the replicas.
fn balancer(backends: Vec<String>) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let addr = serve_peer(move |cfg| {
        let (backends, next) = (backends.clone(), next.clone());
        cfg.route(
            "/",
            actix_web::web::get().to(move || {
                let url = format!(
                    "{}/",
                    backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()]
                );
                async move {
                    let mut resp = awc::Client::new().get(url).send().await.unwrap();
                    let body = resp.body().await.unwrap();
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        );
    });
    format!("http://{addr}")
}

#[actix_web::test]
async fn idle_replicas_scale_in_one_step_after_the_cooldown_down_to_min() {
    let a = spawn_app_with(|c| c.replica = "replica-a".into()).await;
    let b = spawn_app_with(|c| c.replica = "replica-b".into()).await;
    let target = balancer(vec![a.base.clone(), b.base.clone()]);
    // An account token this time (Bearer).
    let railway = FakeRailway::start("acct-token", false, 3);
    let env = |cooldown: &'static str| {
        vec![
            ("AUTOSCALE_TARGET_URL", target.clone()),
            ("RAILWAY_API_TOKEN", "acct-token".into()),
            ("AUTOSCALE_SERVICE_ID", SERVICE.into()),
            ("RAILWAY_ENVIRONMENT_ID", ENVIRONMENT.into()),
            ("RAILWAY_API_URL", railway.url.clone()),
            ("MIN_REPLICAS", "1".into()),
            ("MAX_REPLICAS", "2".into()),
            ("AUTOSCALE_INTERVAL_SECS", "1".into()),
            ("AUTOSCALE_COOLDOWN_SECS", cooldown.to_string()),
        ]
    };
    let spawn = |vars: Vec<(&'static str, String)>| async move {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_binary_with_args(&["autoscale"], &vars).await
    };
    // 3 runs where MAX is 2: one step in, whatever the cooldown.
    let ctl = spawn(env("3600")).await;
    wait_status(&ctl, "a change", |s| s["last_change"]["applied"] == true).await;
    assert_eq!(railway.replicas(), 2);
    // Both replicas seen, idle, 0 % < 25 %: but the cooldown (an hour) holds the count.
    let held = wait_status(&ctl, "the cooldown", |s| {
        s["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cooldown"))
    })
    .await;
    assert_eq!(
        held["observation"]["replicas"].as_array().unwrap().len(),
        2,
        "{held:#}"
    );
    drop(ctl);
    // Without a cooldown: 2 → 1 (MIN), then it stays there.
    let ctl = spawn(env("0")).await;
    wait_status(&ctl, "a scale-in", |s| {
        s["last_change"]["action"] == "scale_in" && s["last_change"]["to"] == 1
    })
    .await;
    assert_eq!(railway.replicas(), 1);
    let before = railway.patches().len();
    let intervals = wait_status(&ctl, "an interval", |_| true).await["intervals"]
        .as_u64()
        .unwrap();
    wait_status(&ctl, "two more intervals", |s| {
        s["intervals"].as_u64().unwrap() >= intervals + 2
    })
    .await;
    assert_eq!(railway.patches().len(), before, "never below MIN");
    for patch in railway.patches() {
        let n = &patch["patch"]["services"][SERVICE]["deploy"]["multiRegionConfig"][REGION];
        assert!(n["numReplicas"].as_u64().unwrap() >= 1, "{patch}");
    }
}

#[actix_web::test]
async fn a_rate_limit_is_waited_out_and_a_dry_run_changes_nothing() {
    let app = spawn_app_with(|c| c.limit_concurrency = 10).await;
    let railway = FakeRailway::start("proj-token", true, 1);
    railway.rate_limit_next(2);
    let mut calls = Vec::new();
    for i in 0..8 {
        calls.push(app.start_call(&format!("CAdry{i}")).await);
    }
    app.wait_for_active(8).await;
    let ctl = controller(&railway, &app.base, &[("AUTOSCALE_DRY_RUN", "true")]).await;
    let limited = wait_status(&ctl, "the API error", |s| s["last_api_error"].is_string()).await;
    assert!(
        limited["last_api_error"]
            .as_str()
            .unwrap()
            .contains("rate limited: retry after 2s"),
        "{limited:#}"
    );
    ctl.wait_for_log("rate limited by Railway's API").await;
    // After the back-off: the rule asks for 2, and a dry run only says so.
    let dry = wait_status(&ctl, "a dry-run change", |s| {
        s["last_change"]["action"] == "scale_out"
    })
    .await;
    assert_eq!(dry["last_change"]["applied"], false, "{dry:#}");
    ctl.wait_for_log("DRY RUN, nothing changed").await;
    assert!(railway.patches().is_empty());
    assert_eq!(railway.replicas(), 1);
    let m = ctl.app.get("/metrics").await.1;
    assert!(
        m.contains("callvisor_autoscale_api_errors_total{kind=\"rate_limited\"} 1"),
        "{m}"
    );
}

#[actix_web::test]
async fn a_bad_setting_exits_2_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callvisor"))
        .arg("autoscale")
        .env_clear()
        .env("AUTOSCALE_TARGET_URL", "http://calls:8080")
        .env("RAILWAY_API_TOKEN", "t")
        .env("AUTOSCALE_SERVICE_ID", "svc")
        .env("RAILWAY_ENVIRONMENT_ID", "env")
        .env("MAX_REPLICAS", "99")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid MAX_REPLICAS=\"99\""), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callvisor"))
        .arg("autoscal")
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command `autoscal`"));
}
