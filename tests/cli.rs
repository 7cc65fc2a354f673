//! The command line's contract: exit codes and where output goes. Bad configuration is refused before
//! anything connects.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
}

fn events(name: &str) -> String {
    format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_lists_every_violation_and_exits_2() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay().args(["validate", "--config", &events("invalid.json")]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    for field in [
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "DestinationConfig.OnFailure.Destination",
        "StartingPositionTimestamp",
        "SourceAccessConfigurations.URI",
    ] {
        assert!(stderr.contains(field), "{field} missing from:\n{stderr}");
    }
    assert!(stderr.contains("0 is out of range; allowed 1-10000"), "{stderr}");
    Ok(())
}

#[test]
fn validate_accepts_the_sample_configurations() -> Result<(), Box<dyn std::error::Error>> {
    for name in ["one-mapping.json", "several-mappings.json"] {
        let out = relay().args(["validate", "--config", &events(name)]).output()?;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn run_refuses_an_invalid_configuration_without_connecting() -> Result<(), Box<dyn std::error::Error>> {
    // The brokers in invalid.json do not exist: a run that tried to connect would hang or report a
    // connection problem instead of exiting 2 at once with the violations.
    let started = std::time::Instant::now();
    let out = relay().args(["run", "--config", &events("invalid.json"), "--until-idle"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no report for a configuration that never ran");
    assert!(String::from_utf8(out.stderr)?.contains("ESM_CONFIG_NOT_VALID"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    Ok(())
}

#[test]
fn a_misspelled_field_is_an_error_naming_it() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("relay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("typo.json");
    std::fs::write(&path, r#"{"Mappings": [{"FunctionName": "f", "Topics": ["t"], "StartingPositon": "LATEST"}]}"#)?;
    let out = relay().args(["validate", "--config"]).arg(&path).output()?;
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)?.contains("StartingPositon"));
    Ok(())
}

#[test]
fn validate_warns_when_the_run_cannot_fit_one_invocation() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay()
        .args(["validate", "--config", &events("one-mapping.json")])
        .env("RELAY_MAX_SECONDS", "10")
        .env("RELAY_TARGET_TIMEOUT_SECONDS", "30")
        .output()?;
    assert_eq!(out.status.code(), Some(0), "a warning, not an invalid configuration");
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("warning: the run lasts 10 s but the target function's timeout is 30 s (plus 3 s kept for the final commit)"),
        "{stderr}"
    );
    let out = relay()
        .args(["validate", "--config", &events("one-mapping.json")])
        .env("RELAY_MAX_SECONDS", "60")
        .env("RELAY_TARGET_TIMEOUT_SECONDS", "30")
        .output()?;
    assert_eq!(String::from_utf8(out.stderr)?, "", "a run that fits says nothing");
    Ok(())
}
