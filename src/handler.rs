//! The Lambda handler: the payload is a configuration (the schedule's input) or an EventBridge Scheduled
//! Event (then `RELAY_CONFIG` / `RELAY_CONFIG_FILE`); the run lasts until the invocation's deadline minus a
//! margin, or until caught up, and returns the run report.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use crate::app;
use crate::invoke::InvokeAsync;
use crate::metrics::RunReport;
use crate::scale::{Coordinator, RateMemory};

/// Serves invocations until the runtime stops. AWS clients are built once per container.
pub async fn serve() -> Result<(), Error> {
    let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let services = app::aws_services(&sdk_config);
    let starter = std::sync::Arc::new(crate::invoke::lambda::LambdaInvoker::new(&sdk_config));
    let rates = std::sync::Arc::new(RateMemory::default());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (services, starter, rates) = (services.clone(), starter.clone(), rates.clone());
        async move { handle_scaled(event, &services, starter.as_ref(), &rates).await }
    }))
    .await
}

/// Handles one invocation.
pub async fn handle(event: LambdaEvent<Value>, services: &crate::relay::Services) -> Result<RunReport, Error> {
    let config = app::resolve_config(&event.payload)?;
    let mut options = app::lambda_options(event.context.deadline);
    // Embedded Metric Format on stdout, every minute and at the end of each mapping's run: CloudWatch turns
    // these lines into metrics without API calls.
    options.metrics = crate::metrics::EmfSink::Stdout;
    options.metrics_interval = crate::metrics::emit_interval();
    Ok(app::run_all(&config, services, &options).await)
}

/// Handles one invocation as coordinator or worker: a worker's payload (see [`crate::scale::worker_payload`])
/// runs its one mapping; any other invocation (the schedule's) first starts the workers each mapping needs,
/// at most `RELAY_MAXIMUM_WORKERS` per mapping (default 1: no workers, one run as before), then runs too.
pub async fn handle_scaled(
    event: LambdaEvent<Value>,
    services: &crate::relay::Services,
    starter: &dyn InvokeAsync,
    rates: &RateMemory,
) -> Result<RunReport, Error> {
    let (payload, worker) = crate::scale::split_worker(&event.payload);
    let (payload, hand_over) = crate::scale::split_hand_over(&payload);
    let config = app::resolve_config(&payload)?;
    let mut options = app::lambda_options(event.context.deadline);
    // Embedded Metric Format on stdout, every minute and at the end of each mapping's run: CloudWatch turns
    // these lines into metrics without API calls.
    options.metrics = crate::metrics::EmfSink::Stdout;
    options.metrics_interval = crate::metrics::emit_interval();
    let continuous = crate::scale::continuous_from_env() && worker.is_none();
    if continuous {
        // A run of the chain polls until its deadline; the schedule only restarts a chain that stopped.
        options.until_idle = false;
        let probe = crate::scale::KafkaGroupProbe { secrets: services.secrets.as_ref() };
        if !hand_over && crate::scale::chain_running(&config, &probe).await {
            tracing::info!("a continuous chain is running: this scheduled tick does nothing");
            return Ok(RunReport { mappings: Vec::new() });
        }
    }
    let cap = app::env_number("RELAY_MAXIMUM_WORKERS").map_or(1, |n| n.min(2000) as u32);
    if worker.is_none() && cap > 1 {
        let within = options.deadline.map_or(std::time::Duration::from_secs(60), |d| d.saturating_duration_since(std::time::Instant::now()));
        let coordinator = Coordinator {
            function: &event.context.invoked_function_arn,
            starter,
            secrets: services.secrets.as_ref(),
            rates,
            default_rate: std::env::var("RELAY_WORKER_RECORDS_PER_SECOND").ok().and_then(|v| v.parse().ok()),
            within,
            cap,
        };
        coordinator.start_workers(&config).await;
    }
    let started = std::time::Instant::now();
    let run = app::run_all(&config, services, &options);
    let report = match options.deadline.filter(|_| continuous) {
        Some(deadline) => {
            tokio::pin!(run);
            // The successor must be in the groups before this run stops invoking: at its deadline less the
            // longest target timeout and the margin (the engine's invoke cut-off).
            let mut longest = options.target_timeout.unwrap_or_default();
            if options.target_timeout.is_none() {
                for mapping in &config.mappings {
                    if let Ok(info) = services.invoker.function_info(&mapping.function_name).await {
                        longest = longest.max(info.timeout);
                    }
                }
            }
            let cutoff = deadline.checked_sub(longest + options.margin).unwrap_or(started);
            let at = tokio::time::Instant::from_std(crate::scale::hand_over_at(started, cutoff));
            tokio::select! {
                report = &mut run => report,
                () = tokio::time::sleep_until(at) => {
                    let successor = crate::scale::successor_payload(&payload);
                    match starter.invoke_async(&event.context.invoked_function_arn, successor).await {
                        crate::invoke::InvokeResult::Completed { status_code: 202, .. } => tracing::info!("successor started"),
                        other => tracing::error!(error_code = "SUCCESSOR_NOT_STARTED", outcome = ?other, "the successor could not be started; the schedule restarts the chain"),
                    }
                    run.await
                }
            }
        }
        None => run.await,
    };
    for mapping in &report.mappings {
        rates.observe(&mapping.uuid, mapping.counts.delivered, started.elapsed());
    }
    Ok(report)
}
