//! The `coolpy7-operator` binary: serves `/healthz` and `/metrics`, waits to hold the leader
//! Lease, then runs the controller until SIGTERM. Everything else lives in the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::get;
use clap::Parser;
use coolpy7_operator::children::MANAGED_BY_SELECTOR;
use coolpy7_operator::crd::Coolpy7Cluster;
use coolpy7_operator::lease::{LeaderElector, RENEW_DEADLINE, RENEW_EVERY};
use coolpy7_operator::metrics::Metrics;
use coolpy7_operator::reconcile::{error_policy, reconcile, Context, FIELD_MANAGER};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "coolpy7-operator",
    version,
    about = "Runs Coolpy7Cluster resources"
)]
struct Args {
    /// Address of /healthz and /metrics
    #[arg(long, env = "COOLPY7_OPERATOR_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// The cluster's DNS domain, for the brokers' seed names
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Namespace of the leader Lease (the operator's own)
    #[arg(long, env = "POD_NAMESPACE", default_value = "coolpy7-system")]
    lease_namespace: String,
    /// This replica's name in the Lease and in Events
    #[arg(long, env = "POD_NAME", default_value = "coolpy7-operator")]
    identity: String,
    /// Log filter (tracing EnvFilter syntax)
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    info!(address = %args.http, "serving /healthz and /metrics");
    let served = metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    served.encode_text(),
                )
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "HTTP server failed");
        }
    });

    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
    let elector = LeaderElector::new(
        client.clone(),
        &args.lease_namespace,
        FIELD_MANAGER,
        &args.identity,
    );
    info!(identity = %args.identity, "waiting for the leader lease");
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    loop {
        match tokio::time::timeout(RENEW_EVERY, elector.try_hold()).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!(%error, "cannot read the leader lease"),
            Err(_) => warn!("the API server did not answer about the leader lease in time"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    }
    info!("leading: reconciling Coolpy7Cluster resources");
    tokio::spawn(keep_leading(elector));

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(args.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client.clone(),
        args.cluster_domain,
        recorder,
        metrics,
    ));
    // Children are watched by label only: never every Secret or Service of the cluster.
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    Controller::new(
        Api::<Coolpy7Cluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<Secret>::all(client.clone()), children.clone())
    .owns(Api::<PodDisruptionBudget>::all(client), children)
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => {
                info!(name = %object.name, namespace = ?object.namespace, "reconciled")
            }
            Err(error) => warn!(%error, "reconcile failed"),
        }
    })
    .await;
    info!("stopped");
    Ok(())
}

/// Renews the lease; a replica that has not renewed it for [`RENEW_DEADLINE`] stops (a timer
/// that no hung request can hold up), so that two never reconcile at once. Its Deployment
/// restarts it as a follower.
async fn keep_leading(elector: LeaderElector) {
    let mut last_held = tokio::time::Instant::now();
    loop {
        let renew = async {
            tokio::time::sleep(RENEW_EVERY).await;
            tokio::time::timeout(RENEW_EVERY, elector.try_hold()).await
        };
        tokio::select! {
            _ = tokio::time::sleep_until(last_held + RENEW_DEADLINE) => {
                error!("could not renew the leader lease in time; stopping");
                std::process::exit(1);
            }
            result = renew => match result {
                Ok(Ok(true)) => last_held = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    error!("another replica took the leader lease; stopping");
                    std::process::exit(1);
                }
                Ok(Err(error)) => warn!(%error, "cannot renew the leader lease"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
        }
    }
}
