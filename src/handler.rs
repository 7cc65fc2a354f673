//! The Lambda handler: the payload is a configuration (the schedule's input) or an EventBridge Scheduled
//! Event (then `RELAY_CONFIG` / `RELAY_CONFIG_FILE`); the run lasts until the invocation's deadline minus a
//! margin, or until caught up, and returns the run report.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use crate::app;
use crate::metrics::RunReport;

/// Serves invocations until the runtime stops. AWS clients are built once per container.
pub async fn serve() -> Result<(), Error> {
    let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let services = app::aws_services(&sdk_config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let services = services.clone();
        async move { handle(event, &services).await }
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
