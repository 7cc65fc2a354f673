//! `redrive`'s command line: bad arguments exit 2 before anything connects, naming the value.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
}

fn config() -> String {
    format!("{}/events/one-mapping.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn an_unknown_source_form_exits_2_naming_it() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay().args(["redrive", "ftp://somewhere/dlq", "--config", &config()]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("redrive source \"ftp://somewhere/dlq\" is not an SQS queue URL"), "{stderr}");
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn a_bad_time_filter_exits_2_naming_it() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay().args(["redrive", "kafka://failed", "--config", &config(), "--since", "last tuesday"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("--since \"last tuesday\" is neither an RFC 3339 time"), "{stderr}");
    Ok(())
}

#[test]
fn an_unknown_mapping_exits_2() -> Result<(), Box<dyn std::error::Error>> {
    let out =
        relay().args(["redrive", "kafka://failed", "--config", &config(), "--mapping", "no-such-uuid"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)?.contains("no mapping with UUID \"no-such-uuid\""));
    Ok(())
}
