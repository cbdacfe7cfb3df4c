//! `callvisor autoscale`'s environment variables, each checked at startup (exit 2 naming it).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::decide::Policy;
use crate::config::ConfigError;

pub const DEFAULT_RAILWAY_API_URL: &str = "https://backboard.railway.com/graphql/v2";

/// How the controller authenticates to Railway's API.
#[derive(Clone)]
pub enum RailwayToken {
    /// `RAILWAY_API_TOKEN`: an account or workspace token, sent as `Authorization: Bearer`.
    Account(SecretString),
    /// `RAILWAY_PROJECT_TOKEN`: one environment's token, sent as `Project-Access-Token`.
    Project(SecretString),
}

impl fmt::Debug for RailwayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RailwayToken::Account(_) => "RAILWAY_API_TOKEN(…)",
            RailwayToken::Project(_) => "RAILWAY_PROJECT_TOKEN(…)",
        })
    }
}

#[derive(Clone, Debug)]
pub struct AutoscaleConfig {
    pub host: IpAddr,
    pub port: u16,
    /// `AUTOSCALE_TARGET_URL`: the call service, whose `/` every sample reads.
    pub target_url: String,
    pub token: RailwayToken,
    /// `AUTOSCALE_SERVICE_ID`: the call service (not this controller's own service).
    pub service_id: String,
    pub environment_id: String,
    pub policy: Policy,
    pub interval: Duration,
    pub dry_run: bool,
    pub api_url: String,
}

impl fmt::Display for AutoscaleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.policy;
        write!(
            f,
            "target={} service={} environment={} replicas={}..{} target_utilization={} \
             scale_in_below={} interval={}s cooldown={}s token={:?} api={}{}",
            self.target_url,
            self.service_id,
            self.environment_id,
            p.min,
            p.max,
            p.target_utilization,
            p.scale_in_below,
            self.interval.as_secs(),
            p.cooldown.as_secs(),
            self.token,
            self.api_url,
            if self.dry_run { " DRY RUN" } else { "" }
        )
    }
}

impl AutoscaleConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let bad = |variable: &'static str, value: String, expected: &'static str| ConfigError {
            variable,
            value,
            expected: expected.into(),
        };
        let missing = |variable: &'static str, expected: &'static str| ConfigError {
            variable,
            value: String::new(),
            expected: expected.into(),
        };
        fn number<T: std::str::FromStr>(
            get: &dyn Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
            expected: &'static str,
            ok: impl Fn(&T) -> bool,
        ) -> Result<T, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.parse::<T>() {
                    Ok(n) if ok(&n) => Ok(n),
                    _ => Err(ConfigError {
                        variable: name,
                        value: v,
                        expected: expected.into(),
                    }),
                },
            }
        }

        let host = number(
            &get,
            "HOST",
            "0.0.0.0".parse().unwrap(),
            "an IP address",
            |_| true,
        )?;
        let port = number(&get, "PORT", 8080u16, "a port number", |_| true)?;
        let target_url = match get("AUTOSCALE_TARGET_URL") {
            Some(v) if crate::config::valid_base_url(&v) => v.trim_end_matches('/').to_string(),
            Some(v) => {
                return Err(bad(
                    "AUTOSCALE_TARGET_URL",
                    v,
                    "the call service's http:// or https:// base URL",
                ))
            }
            None => {
                return Err(missing(
                    "AUTOSCALE_TARGET_URL",
                    "the call service's URL, e.g. http://callvisor.railway.internal:8080",
                ))
            }
        };
        let token = match (get("RAILWAY_API_TOKEN"), get("RAILWAY_PROJECT_TOKEN")) {
            (Some(t), _) => RailwayToken::Account(t.into()),
            (None, Some(t)) => RailwayToken::Project(t.into()),
            (None, None) => {
                return Err(missing(
                    "RAILWAY_API_TOKEN",
                    "a Railway account token (or RAILWAY_PROJECT_TOKEN, a project token)",
                ))
            }
        };
        let id = |name: &'static str, expected: &'static str| -> Result<String, ConfigError> {
            match get(name) {
                Some(v)
                    if v.len() <= 64
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    Ok(v)
                }
                Some(v) => Err(bad(name, v, "a Railway id (letters, digits, dashes)")),
                None => Err(missing(name, expected)),
            }
        };
        let service_id = id(
            "AUTOSCALE_SERVICE_ID",
            "the id of the call service to scale (Settings → Service ID)",
        )?;
        let environment_id = id(
            "RAILWAY_ENVIRONMENT_ID",
            "the environment's id (Railway injects it)",
        )?;
        let min = number(
            &get,
            "MIN_REPLICAS",
            1u32,
            "a whole number from 1 to 50",
            |n| (1..=50).contains(n),
        )?;
        let max = number(
            &get,
            "MAX_REPLICAS",
            5u32,
            "a whole number from 1 to 50",
            |n| (1..=50).contains(n),
        )?;
        if max < min {
            return Err(bad(
                "MAX_REPLICAS",
                max.to_string(),
                "at least MIN_REPLICAS",
            ));
        }
        let target_utilization = number(
            &get,
            "AUTOSCALE_TARGET_UTILIZATION",
            0.5f64,
            "a fraction above 0 and at most 1, e.g. 0.5",
            |f| *f > 0.0 && *f <= 1.0,
        )?;
        let scale_in_below = number(
            &get,
            "AUTOSCALE_SCALE_IN_BELOW",
            0.25f64,
            "a fraction from 0 to below AUTOSCALE_TARGET_UTILIZATION, e.g. 0.25",
            |f| *f >= 0.0 && *f < target_utilization,
        )?;
        let interval = number(
            &get,
            "AUTOSCALE_INTERVAL_SECS",
            15u64,
            "a whole number of seconds from 1 to 3600",
            |n| (1..=3600).contains(n),
        )?;
        let cooldown = number(
            &get,
            "AUTOSCALE_COOLDOWN_SECS",
            300u64,
            "a whole number of seconds from 0 to 86400",
            |n| *n <= 86_400,
        )?;
        let dry_run = match get("AUTOSCALE_DRY_RUN").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => return Err(bad("AUTOSCALE_DRY_RUN", v, "true or false")),
        };
        let api_url = match get("RAILWAY_API_URL") {
            None => DEFAULT_RAILWAY_API_URL.to_string(),
            Some(v) if v.starts_with("http://") || v.starts_with("https://") => v,
            Some(v) => return Err(bad("RAILWAY_API_URL", v, "an http(s) URL")),
        };
        Ok(AutoscaleConfig {
            host,
            port,
            target_url,
            token,
            service_id,
            environment_id,
            policy: Policy {
                min,
                max,
                target_utilization,
                scale_in_below,
                cooldown: Duration::from_secs(cooldown),
            },
            interval: Duration::from_secs(interval),
            dry_run,
            api_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<AutoscaleConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AutoscaleConfig::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const BASE: [(&str, &str); 4] = [
        (
            "AUTOSCALE_TARGET_URL",
            "http://callvisor.railway.internal:8080/",
        ),
        ("RAILWAY_PROJECT_TOKEN", "proj-s3cret"),
        (
            "AUTOSCALE_SERVICE_ID",
            "0b5c5a3e-1111-2222-3333-444455556666",
        ),
        ("RAILWAY_ENVIRONMENT_ID", "e-123"),
    ];

    #[test]
    fn defaults_follow_the_issue_and_the_token_never_shows() {
        let c = parse(&BASE).unwrap();
        assert_eq!(c.target_url, "http://callvisor.railway.internal:8080");
        assert_eq!((c.policy.min, c.policy.max), (1, 5));
        assert_eq!(
            (c.policy.target_utilization, c.policy.scale_in_below),
            (0.5, 0.25)
        );
        assert_eq!(c.interval, Duration::from_secs(15));
        assert_eq!(c.policy.cooldown, Duration::from_secs(300));
        assert!(!c.dry_run);
        assert_eq!(c.api_url, DEFAULT_RAILWAY_API_URL);
        assert!(matches!(c.token, RailwayToken::Project(_)));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("proj-s3cret"), "{shown}");
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            ("AUTOSCALE_TARGET_URL", "callvisor:8080"),
            ("MIN_REPLICAS", "0"),
            ("MAX_REPLICAS", "51"),
            ("AUTOSCALE_TARGET_UTILIZATION", "1.5"),
            ("AUTOSCALE_SCALE_IN_BELOW", "0.6"),
            ("AUTOSCALE_INTERVAL_SECS", "0"),
            ("AUTOSCALE_COOLDOWN_SECS", "soon"),
            ("AUTOSCALE_DRY_RUN", "maybe"),
            ("AUTOSCALE_SERVICE_ID", "a b"),
        ] {
            let mut vars = BASE.to_vec();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let err = parse(&vars).unwrap_err();
            assert_eq!(err.variable, var, "{err}");
        }
        let err = parse(&[
            BASE[0],
            BASE[1],
            BASE[2],
            BASE[3],
            ("MIN_REPLICAS", "4"),
            ("MAX_REPLICAS", "3"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "MAX_REPLICAS");
        for missing in [
            "AUTOSCALE_TARGET_URL",
            "AUTOSCALE_SERVICE_ID",
            "RAILWAY_ENVIRONMENT_ID",
        ] {
            let vars: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            assert_eq!(parse(&vars).unwrap_err().variable, missing);
        }
        let no_token: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "RAILWAY_PROJECT_TOKEN")
            .collect();
        assert_eq!(parse(&no_token).unwrap_err().variable, "RAILWAY_API_TOKEN");
    }

    #[test]
    fn an_account_token_wins_and_dry_run_reads_like_a_flag() {
        let mut vars = BASE.to_vec();
        vars.push(("RAILWAY_API_TOKEN", "acct"));
        vars.push(("AUTOSCALE_DRY_RUN", "true"));
        let c = parse(&vars).unwrap();
        assert!(matches!(c.token, RailwayToken::Account(_)));
        assert!(c.dry_run);
    }
}
