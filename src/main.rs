//! The `kafka-lambda-relay` binary: a Lambda function when `AWS_LAMBDA_RUNTIME_API` is set, otherwise a
//! command-line program (`run`, `status`, `validate`, `redrive`, `demo`). Everything that decides anything
//! lives in the library.

// The Lambda handler's future (coordinator, hand-over, run) nests deeper than rustc's default layout limit.
#![recursion_limit = "256"]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kafka_lambda_relay::app;
use kafka_lambda_relay::redrive;
use kafka_lambda_relay::config::RelayConfig;

#[derive(Parser)]
#[command(name = "kafka-lambda-relay", version, about = "Relay Kafka records to AWS Lambda functions the way Lambda's Kafka event source mapping does")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Poll every enabled mapping, invoke targets, commit; prints the run report (JSON) on stdout.
    Run {
        /// Configuration file ({"Mappings": [...]}); defaults to RELAY_CONFIG (inline JSON) or RELAY_CONFIG_FILE.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop after this many seconds (in-flight invocations finish, offsets are committed; leaving the
        /// consumer groups may take one second more). Also RELAY_MAX_SECONDS.
        #[arg(long)]
        max_seconds: Option<u64>,
        /// Exit once every partition is caught up and committed.
        #[arg(long)]
        until_idle: bool,
        /// Assume this target timeout (seconds) instead of calling GetFunctionConfiguration, for emulators
        /// such as `cargo lambda watch`. Also RELAY_TARGET_TIMEOUT_SECONDS.
        #[arg(long)]
        target_timeout: Option<u64>,
        /// Also print CloudWatch Embedded Metric Format lines on stderr, every minute and at the end (every
        /// RELAY_METRICS_INTERVAL_SECONDS instead, when set).
        #[arg(long)]
        metrics: bool,
        /// Connect, read secrets, list each topic's partitions, watermarks and the group's offsets, and
        /// report, without consuming or committing anything.
        #[arg(long)]
        check: bool,
        /// Invocations in flight at once, over every mapping (one per partition at most). Also
        /// RELAY_MAX_IN_FLIGHT; default 64.
        #[arg(long)]
        max_in_flight: Option<usize>,
        /// MiB of records held in memory at once (buffered or being delivered) before fetching pauses. Also
        /// RELAY_BUFFER_MIB; default 64.
        #[arg(long)]
        buffer_mib: Option<usize>,
        /// Run this many workers (processes of this binary with the same arguments) on each mapping's
        /// consumer group; Kafka shares the partitions out among them. Default 1.
        #[arg(long)]
        workers: Option<u32>,
    },
    /// Per mapping and partition: committed offset, log end, lag in records and seconds, and the offset a
    /// partition is blocked on (from the commit metadata). Reads only: consumes nothing, commits nothing.
    Status {
        /// Configuration file; defaults to RELAY_CONFIG or RELAY_CONFIG_FILE.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration without connecting; exit 0 when valid, 2 with every violation listed.
    Validate {
        /// Configuration file; defaults to RELAY_CONFIG or RELAY_CONFIG_FILE.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Send the records an on-failure destination holds back to the function (or another one): from an SQS
    /// queue (SQS and SNS destinations), an S3 prefix or a Kafka failure topic. Each item is removed (SQS) or
    /// checkpointed (S3 marker object, failure-topic group commit) only after its invocation succeeded.
    /// Prints a JSON summary on stdout; exit 1 when a batch failed.
    Redrive {
        /// The mapping configuration (connection, authentication, target); defaults to RELAY_CONFIG or
        /// RELAY_CONFIG_FILE.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: RedriveArgs,
    },
    /// Run the relay end to end on an in-process Kafka and a sample target function (no cloud account).
    Demo {
        /// Records to produce.
        #[arg(long, default_value_t = 20000)]
        records: u32,
        /// Partitions of the demo topic.
        #[arg(long, default_value_t = 16)]
        partitions: i32,
    },
}

fn init_tracing() {
    kafka_lambda_relay::logging::init(&kafka_lambda_relay::logging::LogSettings::current());
}

/// Progress lines on stderr about every 5 s per mapping, only when stderr is a terminal.
fn terminal_progress() -> Option<kafka_lambda_relay::relay::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let meters = std::sync::Mutex::new(std::collections::HashMap::<String, (i64, kafka_lambda_relay::metrics::ProgressMeter)>::new());
    Some(std::sync::Arc::new(move |uuid: &str, counts: &kafka_lambda_relay::metrics::Counts, lag: Option<i64>| {
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let mut meters = meters.lock().expect("progress lock");
        let (last, meter) = meters.entry(uuid.to_string()).or_insert((0, Default::default()));
        if now - *last >= 5_000 {
            *last = now;
            eprintln!("{}", meter.line(uuid, now, counts, lag));
        }
    }))
}

fn load_config(path: Option<&PathBuf>) -> Result<RelayConfig, kafka_lambda_relay::config::ConfigError> {
    let config = match path {
        Some(path) => RelayConfig::from_file(path)?,
        None => RelayConfig::from_env()?,
    };
    config.validate()?;
    Ok(config)
}

/// `validate` and `run --check`: a run length and target timeout that are both known and leave no room for
/// one invocation are worth a warning before any run reports it as a problem.
fn warn_if_the_run_cannot_fit_an_invocation(run_length: Option<Duration>, target_timeout: Option<Duration>) {
    let margin = kafka_lambda_relay::relay::RunOptions::default().margin;
    if let (Some(run_length), Some(target_timeout)) = (run_length, target_timeout) {
        if let Some(problem) = kafka_lambda_relay::config::run_length_problem(run_length, target_timeout, margin) {
            eprintln!("warning: {problem}");
        }
    }
}

/// The configuration, or exit code 2 after printing every violation on stderr.
fn config_or_exit(path: Option<&PathBuf>) -> Result<RelayConfig, ExitCode> {
    load_config(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })
}

/// Flips to true on Ctrl-C or SIGTERM so runs finish in-flight work, commit and leave their groups.
fn stop_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stop requested");
        let _ = tx.send(true);
    });
    rx
}

/// The `redrive` subcommand's arguments after the configuration.
#[derive(clap::Args)]
struct RedriveArgs {
    /// `https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE`, `s3://BUCKET/PREFIX` or `kafka://TOPIC`.
    source: String,
    /// The mapping's UUID, when the configuration has several.
    #[arg(long)]
    mapping: Option<String>,
    /// Invoke this function instead of the mapping's FunctionName.
    #[arg(long)]
    function: Option<String>,
    /// Print what would be sent (in the summary's WouldSend); invoke nothing, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most N invocations per second.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Only records with a timestamp at or after this time (RFC 3339 or Unix milliseconds).
    #[arg(long)]
    since: Option<String>,
    /// Only records with a timestamp at or before this time (RFC 3339 or Unix milliseconds).
    #[arg(long)]
    until: Option<String>,
    /// Only records of this partition (repeatable).
    #[arg(long = "partition", value_name = "N")]
    partitions: Vec<i32>,
    /// Assume this target timeout (seconds) instead of calling GetFunctionConfiguration.
    #[arg(long)]
    target_timeout: Option<u64>,
    /// S3: prefix of the checkpoint markers in the source bucket.
    #[arg(long, default_value = kafka_lambda_relay::redrive::DEFAULT_CHECKPOINT_PREFIX)]
    checkpoint_prefix: String,
    /// Kafka: the consumer group that checkpoints the failure topic (default
    /// kafka-lambda-relay-redrive-TOPIC).
    #[arg(long)]
    group: Option<String>,
}

/// `redrive`: the mapping, the options, AWS clients from the environment, then the run.
async fn run_redrive(config: &RelayConfig, args: RedriveArgs) -> Result<redrive::Summary, redrive::RedriveError> {
    use kafka_lambda_relay::redrive::{Filters, Options, Source};
    let mapping = redrive::choose_mapping(config, args.mapping.as_deref())?;
    let filters = Filters {
        since_ms: args.since.as_deref().map(|v| redrive::parse_time("--since", v)).transpose()?,
        until_ms: args.until.as_deref().map(|v| redrive::parse_time("--until", v)).transpose()?,
        partitions: args.partitions,
    };
    let options = Options {
        function: args.function,
        dry_run: args.dry_run,
        rate: args.rate,
        filters,
        target_timeout: args
            .target_timeout
            .map(Duration::from_secs)
            .or_else(|| app::env_seconds("RELAY_TARGET_TIMEOUT_SECONDS")),
        checkpoint_prefix: args.checkpoint_prefix,
        group: args.group,
        progress: std::io::stderr().is_terminal(),
        ..Options::new(Source::parse(&args.source)?)
    };
    let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let services = redrive::Services {
        invoker: std::sync::Arc::new(kafka_lambda_relay::invoke::lambda::LambdaInvoker::new(&sdk_config)),
        secrets: std::sync::Arc::new(kafka_lambda_relay::auth::SecretsManagerSource::new(&sdk_config)),
        sdk_config,
    };
    redrive::redrive(mapping, &options, &services).await
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        init_tracing();
        return match kafka_lambda_relay::handler::serve().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error_code = "RUNTIME_FAILED", %error, "lambda runtime stopped");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => {
            init_tracing();
            match load_config(config.as_ref()) {
                Ok(config) => {
                    warn_if_the_run_cannot_fit_an_invocation(
                        app::env_seconds("RELAY_MAX_SECONDS"),
                        app::env_seconds("RELAY_TARGET_TIMEOUT_SECONDS"),
                    );
                    println!("valid: {} mapping(s)", config.mappings.len());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run { config, max_seconds, until_idle, target_timeout, metrics, check, max_in_flight, buffer_mib, workers } => {
            init_tracing();
            let config = match config_or_exit(config.as_ref()) {
                Ok(config) => config,
                Err(exit) => return exit,
            };
            let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let services = app::aws_services(&sdk_config);
            if check {
                warn_if_the_run_cannot_fit_an_invocation(
                    max_seconds.map(Duration::from_secs).or_else(|| app::env_seconds("RELAY_MAX_SECONDS")),
                    target_timeout.map(Duration::from_secs).or_else(|| app::env_seconds("RELAY_TARGET_TIMEOUT_SECONDS")),
                );
                let (report, failed) = app::check_all(&config, &services).await;
                println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
                return if failed { ExitCode::from(1) } else { ExitCode::SUCCESS };
            }
            let options = kafka_lambda_relay::relay::RunOptions {
                deadline: max_seconds.map(Duration::from_secs).or_else(|| app::env_seconds("RELAY_MAX_SECONDS")).map(|d| Instant::now() + d),
                until_idle,
                target_timeout: target_timeout.map(Duration::from_secs).or_else(|| app::env_seconds("RELAY_TARGET_TIMEOUT_SECONDS")),
                stop: Some(stop_signal()),
                progress: terminal_progress(),
                // EMF lines on stderr every minute and at the end of each mapping's run (stdout has the report).
                metrics: if metrics { kafka_lambda_relay::metrics::EmfSink::Stderr } else { kafka_lambda_relay::metrics::EmfSink::Off },
                metrics_interval: kafka_lambda_relay::metrics::emit_interval(),
                max_in_flight: max_in_flight.filter(|n| *n > 0).or_else(|| app::env_number("RELAY_MAX_IN_FLIGHT")).unwrap_or(kafka_lambda_relay::relay::DEFAULT_MAX_IN_FLIGHT),
                buffer_bytes: buffer_mib.filter(|n| *n > 0).or_else(|| app::env_number("RELAY_BUFFER_MIB")).map_or(kafka_lambda_relay::relay::DEFAULT_BUFFER_BYTES, |mib| mib << 20),
                ..Default::default()
            };
            let local_workers = match kafka_lambda_relay::scale::spawn_local_workers(workers.unwrap_or(1).saturating_sub(1)) {
                Ok(children) => children,
                Err(error) => {
                    eprintln!("cannot start workers: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let report = app::run_all(&config, &services, &options).await;
            if !local_workers.is_empty() {
                let mut merged = serde_json::to_value(&report).expect("report serializes");
                let workers_ok = kafka_lambda_relay::scale::collect_local_workers(local_workers, &mut merged);
                println!("{}", serde_json::to_string_pretty(&merged).expect("report serializes"));
                return if workers_ok && !report.has_errors() { ExitCode::SUCCESS } else { ExitCode::from(1) };
            }
            println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
            if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Status { config, json } => {
            init_tracing();
            let config = match config_or_exit(config.as_ref()) {
                Ok(config) => config,
                Err(exit) => return exit,
            };
            let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let secrets = kafka_lambda_relay::auth::SecretsManagerSource::new(&sdk_config);
            let report = kafka_lambda_relay::status::status_all(&config, &secrets).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("status serializes"));
            } else {
                print!("{}", report.table());
            }
            if report.mappings.iter().any(|m| m.state == "Failed") {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Redrive { config, args } => {
            init_tracing();
            let config = match config_or_exit(config.as_ref()) {
                Ok(config) => config,
                Err(exit) => return exit,
            };
            match run_redrive(&config, args).await {
                Ok(summary) => {
                    println!("{}", serde_json::to_string_pretty(&summary).expect("summary serializes"));
                    if summary.has_failures() {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(error) => {
                    eprintln!("redrive failed: {error}");
                    let bad_arguments = matches!(
                        error,
                        redrive::RedriveError::InvalidSource { .. }
                            | redrive::RedriveError::InvalidTime { .. }
                            | redrive::RedriveError::MappingNotChosen { .. }
                            | redrive::RedriveError::UnknownMapping { .. }
                            | redrive::RedriveError::NoMappings
                    );
                    ExitCode::from(if bad_arguments { 2 } else { 1 })
                }
            }
        }
        Command::Demo { records, partitions } => {
            init_tracing();
            match kafka_lambda_relay::demo::run(records, partitions).await {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("demo failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
