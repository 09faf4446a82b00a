//! `fjord`: runs a broker until SIGTERM or Ctrl-C, then shuts down cleanly.

use fjord_broker::alloc::BrokerAllocator;

#[global_allocator]
static ALLOCATOR: BrokerAllocator = BrokerAllocator;
use fjord_broker::config::{Args, BrokerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // stderr, with the recent lines kept for the admin API's debug bundle.
        .with_writer(fjord_broker::logring::Tee::default)
        .init();
    let args = Args::parse();
    // A misspelt variable would otherwise be ignored without a word.
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for name in fjord_broker::config::unknown_variables(names) {
        tracing::warn!(variable = %name, "FJORD_ variable is not a config key (see fjord --help); ignored");
    }
    let config = match BrokerConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fjord: {e}");
            std::process::exit(2);
        }
    };
    let running = fjord_broker::start(config).await?;
    // Tests and scripts read the bound addresses (port 0 picks a free one); the cluster's and the
    // admin API's come first, as the client listener's line is the one they wait for.
    if let Some(c) = &running.broker.cluster {
        println!("fjord cluster listening on {}", c.cluster_addr);
    }
    if let Some(admin) = running.admin_addr {
        println!("fjord admin API listening on http://{admin}");
    }
    println!("fjord listening on {}", running.local_addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown().await;
    Ok(())
}
