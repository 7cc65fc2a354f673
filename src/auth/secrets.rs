//! Secrets Manager: the [`SecretSource`] seam, its aws-sdk-secretsmanager implementation, and reading the
//! JSON shapes AWS documents for each `SourceAccessConfigurations` type.
//!
//! Nothing here formats a secret value: errors name the ARN and the field. JSON parse errors are reported by
//! position only (serde_json's syntax errors carry no content, and typed deserialization, whose errors can
//! quote a value, is not used).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use super::AuthError;

/// Reading a secret failed. Messages name the ARN, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The ARN names no secret (or one scheduled for deletion).
    #[error("secret {arn:?} does not exist in Secrets Manager ({code})")]
    NotFound {
        /// The secret ARN.
        arn: String,
        /// AWS's error code.
        code: String,
    },
    /// The relay's role may not read the secret or may not decrypt it with its KMS key.
    #[error("the relay may not read secret {arn:?} ({code}): allow secretsmanager:GetSecretValue on it for the relay's role, and kms:Decrypt on its KMS key if it uses a customer managed key")]
    AccessDenied {
        /// The secret ARN.
        arn: String,
        /// AWS's error code (`AccessDeniedException`, `DecryptionFailure`).
        code: String,
    },
    /// The secret holds binary data; AWS's Kafka secrets are JSON text.
    #[error("secret {arn:?} has no SecretString (binary secrets are not supported); store the JSON as text")]
    NotAString {
        /// The secret ARN.
        arn: String,
    },
    /// Secrets Manager answered with another error.
    #[error("Secrets Manager refused to return secret {arn:?}: {code}: {message}")]
    Rejected {
        /// The secret ARN.
        arn: String,
        /// AWS's error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// Secrets Manager could not be reached (network, timeout).
    #[error("cannot reach Secrets Manager to read secret {arn:?}: {message}; in a VPC the relay needs a Secrets Manager endpoint (private DNS on) or a NAT gateway")]
    Unreachable {
        /// The secret ARN.
        arn: String,
        /// The transport error.
        message: String,
    },
}

impl From<SecretError> for AuthError {
    /// All of these are fixed in the mapping's configuration or the relay's deployment, not in the cluster.
    fn from(error: SecretError) -> Self {
        AuthError::config(error.to_string())
    }
}

/// Where secrets come from: one narrow seam so [`super::resolve`] is tested without AWS.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// The `SecretString` of the secret `arn`.
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError>;
}

/// [`SecretSource`] on aws-sdk-secretsmanager. Each ARN is fetched at most once for the life of the value,
/// even when several mappings ask for it at the same time: create one per run so rotated secrets are seen
/// by the next run. Only successful reads are kept.
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    cache: Mutex<HashMap<String, Arc<OnceCell<String>>>>,
}

impl std::fmt::Debug for SecretsManagerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached: Vec<String> = self.cache.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("SecretsManagerSource").field("cached_arns", &cached).finish_non_exhaustive()
    }
}

impl SecretsManagerSource {
    /// A source using the SDK configuration (region, credentials, `AWS_ENDPOINT_URL`).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self::from_client(aws_sdk_secretsmanager::Client::new(config))
    }

    /// A source using an existing client.
    pub fn from_client(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client, cache: Mutex::new(HashMap::new()) }
    }

    async fn fetch(&self, arn: &str) -> Result<String, SecretError> {
        let output = self.client.get_secret_value().secret_id(arn).send().await.map_err(|error| {
            let arn = arn.to_string();
            match &error {
                SdkError::ServiceError(_) => {
                    let code = error.code().unwrap_or("Unknown").to_string();
                    let message = error.message().unwrap_or_default().to_string();
                    match code.as_str() {
                        "ResourceNotFoundException" => SecretError::NotFound { arn, code },
                        "AccessDeniedException"
                        | "DecryptionFailure"
                        | "UnrecognizedClientException"
                        | "InvalidSignatureException" => SecretError::AccessDenied { arn, code },
                        _ => SecretError::Rejected { arn, code, message },
                    }
                }
                _ => SecretError::Unreachable { arn, message: describe_transport_error(&error) },
            }
        })?;
        output.secret_string.ok_or_else(|| SecretError::NotAString { arn: arn.to_string() })
    }
}

/// The innermost cause of a transport failure, which is where the useful text is.
fn describe_transport_error<E: std::error::Error + 'static>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

#[async_trait::async_trait]
impl SecretSource for SecretsManagerSource {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            cache.entry(arn.to_string()).or_default().clone()
        };
        cell.get_or_try_init(|| self.fetch(arn)).await.cloned()
    }
}

/// A secret's JSON object, with the ARN and type kept for error sentences.
pub(crate) struct SecretFields<'a> {
    arn: &'a str,
    kind: &'a str,
    expected: &'static str,
    object: serde_json::Map<String, serde_json::Value>,
}

impl<'a> SecretFields<'a> {
    /// Parses `text` as a JSON object. `expected` describes the documented shape, for the error sentence.
    pub(crate) fn parse(arn: &'a str, kind: &'a str, expected: &'static str, text: &str) -> Result<Self, AuthError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
            // serde_json syntax errors say where, not what: "expected `,` or `}` at line 1 column 12".
            AuthError::config(format!("secret {arn:?} for {kind} is not valid JSON ({error}); expected {expected}"))
        })?;
        match value {
            serde_json::Value::Object(object) => Ok(Self { arn, kind, expected, object }),
            other => Err(AuthError::config(format!(
                "secret {arn:?} for {kind} is a JSON {}, not an object; expected {expected}",
                json_type(&other)
            ))),
        }
    }

    /// A required, non-empty string field.
    pub(crate) fn required(&self, name: &str) -> Result<String, AuthError> {
        self.optional(name)?.ok_or_else(|| {
            AuthError::config(format!(
                "secret {:?} for {} has no {name:?} field (or it is empty); expected {}",
                self.arn, self.kind, self.expected
            ))
        })
    }

    /// An optional string field; absent, null and `""` are all `None`.
    pub(crate) fn optional(&self, name: &str) -> Result<Option<String>, AuthError> {
        match self.object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) if text.is_empty() => Ok(None),
            // librdkafka takes settings as C strings: a NUL would make the client fail to start with an
            // error that says nothing about the secret.
            Some(serde_json::Value::String(text)) if text.contains('\0') => Err(AuthError::config(format!(
                "field {name:?} of secret {:?} for {} contains a NUL character; expected {}",
                self.arn, self.kind, self.expected
            ))),
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(AuthError::config(format!(
                "field {name:?} of secret {:?} for {} is a JSON {}, not a string; expected {}",
                self.arn,
                self.kind,
                json_type(other),
                self.expected
            ))),
        }
    }

    /// The ARN, for sentences.
    pub(crate) fn arn(&self) -> &str {
        self.arn
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ErrorCode;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf";
    const SHAPE: &str = r#"{"username": "...", "password": "..."}"#;

    #[test]
    fn missing_field_names_the_secret_and_field_but_not_values() -> Result<(), AuthError> {
        let fields =
            SecretFields::parse(ARN, "SASL_SCRAM_512_AUTH", SHAPE, r#"{"username": "alice", "pass": "hunter2"}"#)?;
        assert_eq!(fields.required("username")?, "alice");
        let error = fields.required("password").unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert_eq!(
            error.sentence,
            format!(
                "secret {ARN:?} for SASL_SCRAM_512_AUTH has no \"password\" field (or it is empty); expected {SHAPE}"
            )
        );
        assert!(!error.sentence.contains("hunter2"));
        Ok(())
    }

    #[test]
    fn empty_and_null_fields_count_as_missing() -> Result<(), AuthError> {
        let fields = SecretFields::parse(ARN, "BASIC_AUTH", SHAPE, r#"{"username": "", "password": null}"#)?;
        assert!(fields.required("username").is_err());
        assert!(fields.required("password").is_err());
        assert_eq!(fields.optional("password")?, None);
        Ok(())
    }

    #[test]
    fn malformed_json_is_reported_by_position_without_content() {
        let error = SecretFields::parse(ARN, "BASIC_AUTH", SHAPE, r#"{"username": "alice", "password": hunter2}"#)
            .err()
            .expect("malformed JSON is refused");
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(error.sentence.starts_with(&format!("secret {ARN:?} for BASIC_AUTH is not valid JSON (")), "{error}");
        assert!(error.sentence.contains("line 1 column"), "{error}");
        assert!(!error.sentence.contains("hunter2"), "{error}");
    }

    #[test]
    fn non_object_and_non_string_values_are_refused_without_content() {
        let error = SecretFields::parse(ARN, "BASIC_AUTH", SHAPE, r#""hunter2""#).err().expect("a string is refused");
        assert_eq!(
            error.sentence,
            format!("secret {ARN:?} for BASIC_AUTH is a JSON string, not an object; expected {SHAPE}")
        );

        let fields = SecretFields::parse(ARN, "BASIC_AUTH", SHAPE, r#"{"username": "alice", "password": 55555555}"#)
            .expect("an object parses");
        let error = fields.required("password").unwrap_err();
        assert_eq!(
            error.sentence,
            format!(
                "field \"password\" of secret {ARN:?} for BASIC_AUTH is a JSON number, not a string; expected {SHAPE}"
            )
        );
        assert!(!error.sentence.contains("55555555"));
    }

    #[test]
    fn secret_errors_become_config_errors_naming_the_arn() {
        let error: AuthError =
            SecretError::AccessDenied { arn: ARN.into(), code: "AccessDeniedException".into() }.into();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(error.sentence.contains(ARN));
        assert!(error.sentence.contains("secretsmanager:GetSecretValue"));
        let error: AuthError =
            SecretError::NotFound { arn: ARN.into(), code: "ResourceNotFoundException".into() }.into();
        assert_eq!(
            error.to_string(),
            format!(
                "ESM_CONFIG_NOT_VALID: secret {ARN:?} does not exist in Secrets Manager (ResourceNotFoundException)"
            )
        );
    }

    #[test]
    fn a_nul_character_in_a_field_is_refused_without_content() -> Result<(), AuthError> {
        let fields =
            SecretFields::parse(ARN, "BASIC_AUTH", SHAPE, r#"{"username": "alice", "password": "hun\u0000ter2"}"#)?;
        let error = fields.required("password").unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert_eq!(
            error.sentence,
            format!("field \"password\" of secret {ARN:?} for BASIC_AUTH contains a NUL character; expected {SHAPE}")
        );
        Ok(())
    }
}
