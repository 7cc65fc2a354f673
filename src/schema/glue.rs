//! AWS Glue Schema Registry: `GetSchemaVersion` by the schema version UUID in each record's header, with
//! the relay's role (Glue takes no `AccessConfigs`).

use aws_sdk_glue::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{DataFormat as GlueFormat, SchemaVersionStatus};

use super::format::{DataFormat, RegisteredSchema};
use super::registry::{RegistryError, SchemaRef, SchemaRegistry};

/// The Glue registry a mapping names.
#[derive(Debug, Clone)]
pub struct GlueRegistry {
    client: aws_sdk_glue::Client,
    registry_name: String,
}

impl GlueRegistry {
    /// A client in the registry's region (from its ARN), with the relay's credentials and endpoint settings
    /// (`AWS_ENDPOINT_URL_GLUE` is honoured by the SDK).
    pub fn new(sdk_config: &aws_config::SdkConfig, region: &str, registry_name: &str) -> Self {
        let config = aws_sdk_glue::config::Builder::from(sdk_config)
            .region(aws_sdk_glue::config::Region::new(region.to_string()))
            .build();
        Self::with_client(aws_sdk_glue::Client::from_conf(config), registry_name)
    }

    /// A registry over a ready client.
    pub fn with_client(client: aws_sdk_glue::Client, registry_name: &str) -> Self {
        Self { client, registry_name: registry_name.to_string() }
    }
}

#[async_trait::async_trait]
impl SchemaRegistry for GlueRegistry {
    async fn fetch(&self, id: SchemaRef) -> Result<RegisteredSchema, RegistryError> {
        if !matches!(id, SchemaRef::Glue(_)) {
            return Err(RegistryError::Unsupported {
                id: id.to_string(),
                reason: "a Confluent schema id sent to a Glue registry".into(),
            });
        }
        let id_text = id.to_string();
        let output = match self.client.get_schema_version().schema_version_id(&id_text).send().await {
            Ok(output) => output,
            Err(error) => return Err(classify_error(&id_text, error)),
        };
        // Glue resolves any version id in the account; a record must name a schema of the mapping's registry,
        // the one the relay's role is granted.
        if let Some(arn) = output.schema_arn() {
            let registry = arn.split_once(":schema/").and_then(|(_, rest)| rest.split('/').next());
            if registry.is_some_and(|r| r != self.registry_name) {
                return Err(RegistryError::NotFound {
                    id: id_text,
                    detail: format!("it belongs to schema {arn:?}, not to registry {:?}", self.registry_name),
                });
            }
        }
        if let Some(status) = output.status() {
            if *status != SchemaVersionStatus::Available {
                return Err(RegistryError::NotFound {
                    id: id_text,
                    detail: format!("its status is {}", status.as_str()),
                });
            }
        }
        let definition = output
            .schema_definition()
            .ok_or_else(|| RegistryError::Malformed { id: id_text.clone(), reason: "no SchemaDefinition".into() })?
            .to_string();
        let format = match output.data_format() {
            Some(GlueFormat::Avro) => DataFormat::Avro,
            Some(GlueFormat::Json) => DataFormat::Json,
            Some(GlueFormat::Protobuf) => DataFormat::Protobuf,
            other => {
                return Err(RegistryError::Unsupported {
                    id: id_text,
                    reason: format!("DataFormat {:?} is not AVRO, PROTOBUF or JSON", other.map(|f| f.as_str())),
                })
            }
        };
        Ok(RegisteredSchema::new(format, definition))
    }
}

/// Glue's error → [`RegistryError`]; which codes are transient is decided here.
fn classify_error<E, R>(id: &str, error: SdkError<E, R>) -> RegistryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_string();
            let message = service.err().message().unwrap_or_default().to_string();
            error_for_code(id, &code, message)
        }
        other => RegistryError::Unreachable { id: id.into(), message: crate::error::with_causes(other) },
    }
}

fn error_for_code(id: &str, code: &str, message: String) -> RegistryError {
    match code {
        "EntityNotFoundException" | "InvalidInputException" => {
            RegistryError::NotFound { id: id.into(), detail: format!("{code}: {message}") }
        }
        "AccessDeniedException" => RegistryError::Unauthorized { id: id.into(), detail: code.into() },
        _ => RegistryError::Rejected {
            id: id.into(),
            status: code.into(),
            transient: matches!(code, "ThrottlingException" | "InternalServiceException" | "OperationTimeoutException"),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glue_codes_map_to_registry_errors() {
        assert!(matches!(error_for_code("u", "EntityNotFoundException", "no".into()), RegistryError::NotFound { .. }));
        assert!(matches!(
            error_for_code("u", "AccessDeniedException", "no".into()),
            RegistryError::Unauthorized { .. }
        ));
        assert!(error_for_code("u", "ThrottlingException", String::new()).retryable());
        assert!(error_for_code("u", "InternalServiceException", String::new()).retryable());
        assert!(!error_for_code("u", "ResourceNumberLimitExceededException", String::new()).retryable());
    }
}
