//! The callvisor binary: configuration, logging, run, exit code. `callvisor autoscale` runs the
//! replica controller instead (`src/autoscale/`); `callvisor agents check [FILE]` checks an
//! agents file and prints its routing table (docs/agents.md).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use callvisor::app::Application;
use callvisor::config::Config;
use callvisor::drain::{wait_and_drain, Signals};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None => {}
        Some("autoscale") => return callvisor::autoscale::main(),
        Some("agents") => return callvisor::call::handlers::openai::agents::main(&args[2..]),
        Some(other) => {
            eprintln!(
                "callvisor: unknown command `{other}`: run `callvisor` (the call server, \
                 configured by environment variables), `callvisor autoscale` (the replica \
                 controller, docs/scaling.md) or `callvisor agents check [FILE]` (docs/agents.md)"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callvisor: {e}");
            return ExitCode::from(2);
        }
    };
    callvisor::logging::init(config.log_format);
    log::info!("callvisor {} starting: {config}", env!("CARGO_PKG_VERSION"));
    // Each call holds a socket; the usual soft limit of 1024 open files would cap a replica
    // near 1,000 calls whatever LIMIT_CONCURRENCY says.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < config.limit_concurrency as u64 + 64 => log::warn!(
            "open files limit is {limit}: too low for LIMIT_CONCURRENCY={} (raise the hard limit)",
            config.limit_concurrency
        ),
        Ok(_) => {}
        Err(e) => log::warn!("could not raise the open files limit: {e}"),
    }

    let drain_timeout = config.drain_timeout;
    let result = actix_web::rt::System::new().block_on(async move {
        let signals = Signals::install()?;
        let app = Application::build(config)?;
        log::info!("listening on port {}", app.port());
        let (handle, supervisor, records) = (app.handle(), app.supervisor(), app.records());
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let deadline = tokio::select! {
            done = server => return done.unwrap_or(Ok(())),
            deadline = wait_and_drain(signals, supervisor, drain_timeout) => deadline,
        };
        // The calls' records (hand-offs included) go on being delivered until the drain's
        // deadline; what is left then is logged whole (or stays in the spool).
        if let Some(records) = records {
            records.flush(deadline.into_std()).await;
        }
        // Every call has ended or been handed over. A graceful stop still lets the last close
        // frames reach the wire (bounded by the server's shutdown timeout).
        handle.stop(true).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
