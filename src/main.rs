//! The callvisor binary: configuration, logging, run, exit code.

use std::process::ExitCode;

use callvisor::app::Application;
use callvisor::config::Config;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callvisor: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    log::info!("callvisor {} starting: {config}", env!("CARGO_PKG_VERSION"));

    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config)?;
        log::info!("listening on port {}", app.port());
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
