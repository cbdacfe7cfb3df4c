//! Railway's public GraphQL API, the two documents the controller sends.
//!
//! It reads the call service's replicas per region the way `railway scale` does (the latest
//! deployment's `meta.serviceManifest.deploy.multiRegionConfig`, falling back to the service
//! instance's `region` / `numReplicas`), and changes them with `environmentPatchCommit`, the
//! dashboard's path: the region that holds the most replicas gets the new count, the others keep
//! theirs. Both documents are validated against Railway's schema (`schema/railway.graphql`) by
//! the tests. A 429 is backed off for its `Retry-After`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::config::RailwayToken;

/// The replicas per region of the call service, and where the count comes from.
pub const REPLICAS_QUERY: &str =
    "query AutoscaleReplicas($serviceId: String!, $environmentId: String!) {
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {
    region
    numReplicas
    latestDeployment {
      id
      meta
    }
  }
}";

/// What the dashboard and `railway scale` send to change replica counts.
pub const PATCH_MUTATION: &str = "mutation EnvironmentPatchCommit($environmentId: String!, $patch: EnvironmentConfig!, $commitMessage: String) {
  environmentPatchCommit(environmentId: $environmentId, patch: $patch, commitMessage: $commitMessage)
}";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a `Retry-After`, a 429 is waited out this long.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 429: wait this long before the next request.
    RateLimited(Duration),
    /// The request never got an answer.
    Unreachable(String),
    /// An HTTP error, or GraphQL `errors`.
    Rejected(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::RateLimited(d) => write!(f, "rate limited: retry after {}s", d.as_secs()),
            ApiError::Unreachable(e) => write!(f, "unreachable: {e}"),
            ApiError::Rejected(e) => write!(f, "rejected: {e}"),
        }
    }
}

impl ApiError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unreachable(_) => "unreachable",
            ApiError::Rejected(_) => "rejected",
        }
    }
}

/// Replica counts per region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Regions(pub BTreeMap<String, u32>);

impl Regions {
    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }

    /// `total` replicas: the region with the most replicas (the first, on a tie) takes the change.
    pub fn with_total(&self, total: u32) -> Regions {
        let mut regions = self.0.clone();
        let main = self
            .0
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(r, _)| r.clone());
        if let Some(main) = main {
            let others: u32 = self
                .0
                .iter()
                .filter(|(r, _)| **r != main)
                .map(|(_, n)| n)
                .sum();
            regions.insert(main, total.saturating_sub(others).max(1));
        }
        Regions(regions)
    }

    fn from_instance(instance: &Value) -> Option<Regions> {
        let manifest =
            &instance["latestDeployment"]["meta"]["serviceManifest"]["deploy"]["multiRegionConfig"];
        if let Some(config) = manifest.as_object().filter(|m| !m.is_empty()) {
            let regions = config
                .iter()
                .map(|(region, c)| {
                    let n = c["numReplicas"].as_u64().unwrap_or(0) as u32;
                    (region.clone(), n)
                })
                .collect();
            return Some(Regions(regions));
        }
        let region = instance["region"].as_str()?;
        let n = instance["numReplicas"].as_u64().unwrap_or(1) as u32;
        Some(Regions(BTreeMap::from([(region.to_string(), n)])))
    }
}

pub struct Railway {
    url: String,
    token: RailwayToken,
    client: awc::Client,
}

impl Railway {
    pub fn new(url: &str, token: RailwayToken) -> Self {
        Railway {
            url: url.to_string(),
            token,
            client: crate::client::builder().timeout(REQUEST_TIMEOUT).finish(),
        }
    }

    async fn request(&self, query: &str, variables: Value) -> Result<Value, ApiError> {
        let req = self.client.post(&self.url);
        let req = match &self.token {
            RailwayToken::Account(t) => req.bearer_auth(t.expose_secret()),
            RailwayToken::Project(t) => {
                req.insert_header(("Project-Access-Token", t.expose_secret()))
            }
        };
        let mut resp = req
            .send_json(&json!({"query": query, "variables": variables}))
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_BACKOFF, Duration::from_secs);
            return Err(ApiError::RateLimited(wait));
        }
        let body = resp
            .body()
            .limit(1 << 20)
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let body: Value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::Rejected(format!("HTTP {}: the answer is not JSON", status.as_u16()))
        })?;
        if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
            let messages: Vec<&str> = errors
                .iter()
                .map(|e| e["message"].as_str().unwrap_or("?"))
                .collect();
            return Err(ApiError::Rejected(format!(
                "HTTP {}: {}",
                status.as_u16(),
                messages.join("; ")
            )));
        }
        if !status.is_success() {
            return Err(ApiError::Rejected(format!("HTTP {}", status.as_u16())));
        }
        Ok(body["data"].clone())
    }

    /// The call service's replicas per region, as Railway has them set.
    pub async fn replicas(
        &self,
        service_id: &str,
        environment_id: &str,
    ) -> Result<Regions, ApiError> {
        let data = self
            .request(
                REPLICAS_QUERY,
                json!({"serviceId": service_id, "environmentId": environment_id}),
            )
            .await?;
        Regions::from_instance(&data["serviceInstance"]).ok_or_else(|| {
            ApiError::Rejected(
                "no service instance of AUTOSCALE_SERVICE_ID in this environment".into(),
            )
        })
    }

    /// Sets the replicas per region (a region at 0 is sent as `null`, as the CLI does).
    pub async fn set_replicas(
        &self,
        service_id: &str,
        environment_id: &str,
        regions: &Regions,
        message: &str,
    ) -> Result<(), ApiError> {
        self.request(
            PATCH_MUTATION,
            patch_variables(service_id, environment_id, regions, message),
        )
        .await
        .map(|_| ())
    }
}

pub fn patch_variables(
    service_id: &str,
    environment_id: &str,
    regions: &Regions,
    message: &str,
) -> Value {
    let config: serde_json::Map<String, Value> = regions
        .0
        .iter()
        .map(|(region, n)| {
            let value = if *n == 0 {
                Value::Null
            } else {
                json!({"numReplicas": n})
            };
            (region.clone(), value)
        })
        .collect();
    json!({
        "environmentId": environment_id,
        "commitMessage": message,
        "patch": {"services": {service_id: {"deploy": {"multiRegionConfig": config}}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_count_comes_from_the_deployment_manifest_then_the_instance() {
        let instance = json!({"region": "us-west2", "numReplicas": 2, "latestDeployment": {"id": "d",
            "meta": {"serviceManifest": {"deploy": {"multiRegionConfig": {
                "us-east4-eqdc4a": {"numReplicas": 3}, "europe-west4-drams3a": {"numReplicas": 1}}}}}}});
        let r = Regions::from_instance(&instance).unwrap();
        assert_eq!(r.total(), 4);
        assert_eq!(r.0["us-east4-eqdc4a"], 3);
        let plain = json!({"region": "us-west2", "numReplicas": 2, "latestDeployment": null});
        assert_eq!(
            Regions::from_instance(&plain).unwrap().0,
            BTreeMap::from([("us-west2".to_string(), 2)])
        );
        assert_eq!(Regions::from_instance(&json!(null)), None);
    }

    #[test]
    fn the_biggest_region_takes_the_change_and_the_others_are_kept() {
        let r = Regions(BTreeMap::from([
            ("us-east4-eqdc4a".to_string(), 3),
            ("europe-west4-drams3a".to_string(), 1),
        ]));
        let up = r.with_total(6);
        assert_eq!(up.0["us-east4-eqdc4a"], 5);
        assert_eq!(up.0["europe-west4-drams3a"], 1);
        // Never below one in the main region.
        assert_eq!(r.with_total(1).0["us-east4-eqdc4a"], 1);
        let v = patch_variables("svc", "env", &up, "callvisor autoscale: 4 -> 6");
        assert_eq!(
            v["patch"]["services"]["svc"]["deploy"]["multiRegionConfig"]["us-east4-eqdc4a"],
            json!({"numReplicas": 5})
        );
        let zero = Regions(BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 0)]));
        assert_eq!(
            patch_variables("svc", "env", &zero, "m")["patch"]["services"]["svc"]["deploy"]
                ["multiRegionConfig"]["b"],
            Value::Null
        );
    }
}
