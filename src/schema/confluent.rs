//! A Confluent-compatible registry over its REST API: `GET /schemas/ids/{id}`, with the `AccessConfigs`
//! AWS documents for it (`BASIC_AUTH`, `CLIENT_CERTIFICATE_TLS_AUTH`, `SERVER_ROOT_CA_CERTIFICATE`), each a
//! Secrets Manager secret read through [`crate::auth::SecretSource`].

use std::time::Duration;

use serde::Deserialize;

use super::format::{DataFormat, RegisteredSchema};
use super::registry::{RegistryError, SchemaRef, SchemaRegistry};
use super::SetupError;
use crate::auth::SecretFields;
use crate::auth::SecretSource;
use crate::config::KafkaSchemaRegistryAccessConfig;

/// Per request: a registry that has not answered by then counts as unreachable (and is retried).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const BASIC_AUTH_SHAPE: &str = "{\"username\": \"...\", \"password\": \"...\"}";
const ROOT_CA_SHAPE: &str = "{\"certificate\": \"-----BEGIN CERTIFICATE-----...\"}";
const CLIENT_CERTIFICATE_SHAPE: &str =
    "{\"certificate\": \"-----BEGIN CERTIFICATE-----...\", \"privateKey\": \"-----BEGIN PRIVATE KEY-----...\"}";

/// A Confluent-compatible registry.
pub struct ConfluentRegistry {
    base: String,
    client: reqwest::Client,
    basic_auth: Option<(String, String)>,
}

impl std::fmt::Debug for ConfluentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfluentRegistry")
            .field("base", &self.base)
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// `GET /schemas/ids/{id}`'s body.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

impl ConfluentRegistry {
    /// A client for the registry at `uri`, with the secrets `access_configs` name read from `secrets`.
    pub async fn connect(
        uri: &str,
        access_configs: &[KafkaSchemaRegistryAccessConfig],
        secrets: &dyn SecretSource,
    ) -> Result<Self, SetupError> {
        // reqwest is built without a default crypto provider; use the one the AWS SDK already links.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).use_rustls_tls();
        let mut basic_auth = None;
        for access in access_configs {
            let kind = access.kind.as_str();
            let text = secrets.secret_string(&access.uri).await.map_err(|e| SetupError::Secret(e.to_string()))?;
            let secret_error = |e: crate::auth::AuthError| SetupError::Secret(e.sentence);
            match kind {
                "BASIC_AUTH" => {
                    let fields =
                        SecretFields::parse(&access.uri, kind, BASIC_AUTH_SHAPE, &text).map_err(secret_error)?;
                    basic_auth = Some((
                        fields.required("username").map_err(secret_error)?,
                        fields.required("password").map_err(secret_error)?,
                    ));
                }
                "SERVER_ROOT_CA_CERTIFICATE" => {
                    let fields = SecretFields::parse(&access.uri, kind, ROOT_CA_SHAPE, &text).map_err(secret_error)?;
                    let pem = fields.required("certificate").map_err(secret_error)?;
                    let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                        SetupError::Tls(format!("certificate of secret {:?} is not PEM: {e}", access.uri))
                    })?;
                    for certificate in certificates {
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                "CLIENT_CERTIFICATE_TLS_AUTH" => {
                    let fields = SecretFields::parse(&access.uri, kind, CLIENT_CERTIFICATE_SHAPE, &text)
                        .map_err(secret_error)?;
                    let certificate = fields.required("certificate").map_err(secret_error)?;
                    let key = fields.required("privateKey").map_err(secret_error)?;
                    if key.contains("ENCRYPTED PRIVATE KEY") {
                        // rustls reads only unencrypted keys; privateKeyPassword cannot be honoured.
                        return Err(SetupError::Tls(format!(
                            "privateKey of secret {:?} is encrypted; the relay needs an unencrypted PKCS#8 key (drop privateKeyPassword)",
                            access.uri
                        )));
                    }
                    let pem = format!("{certificate}\n{key}\n");
                    let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
                        SetupError::Tls(format!(
                            "certificate/privateKey of secret {:?} do not form a client identity: {e}",
                            access.uri
                        ))
                    })?;
                    builder = builder.identity(identity);
                }
                other => return Err(SetupError::Unsupported(format!("AccessConfigs type {other:?}"))),
            }
        }
        let client = builder.build().map_err(|e| SetupError::Tls(e.to_string()))?;
        Ok(Self::with_client(uri, client, basic_auth))
    }

    /// A registry over a ready client (tests, and [`Self::connect`]).
    pub fn with_client(uri: &str, client: reqwest::Client, basic_auth: Option<(String, String)>) -> Self {
        Self { base: uri.trim_end_matches('/').to_string(), client, basic_auth }
    }
}

#[async_trait::async_trait]
impl SchemaRegistry for ConfluentRegistry {
    async fn fetch(&self, id: SchemaRef) -> Result<RegisteredSchema, RegistryError> {
        let SchemaRef::Confluent(numeric) = id else {
            return Err(RegistryError::Unsupported {
                id: id.to_string(),
                reason: "a Glue schema version id sent to a Confluent registry".into(),
            });
        };
        let id_text = numeric.to_string();
        let mut request = self
            .client
            .get(format!("{}/schemas/ids/{numeric}", self.base))
            .header(reqwest::header::ACCEPT, "application/vnd.schemaregistry.v1+json, application/json");
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| RegistryError::Unreachable {
            id: id_text.clone(),
            // Without the URL: it is the configured one, and a URL could carry user info.
            message: describe(&e.without_url()),
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| RegistryError::Unreachable { id: id_text.clone(), message: describe(&e.without_url()) })?;
        classify(&id_text, status.as_u16(), &body)
    }
}

/// The registry's answer → a schema or the error; the whole decision on HTTP status is here.
fn classify(id: &str, status: u16, body: &str) -> Result<RegisteredSchema, RegistryError> {
    let message = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect())
    };
    match status {
        200 => {
            let parsed: SchemaById = serde_json::from_str(body).map_err(|e| RegistryError::Malformed {
                id: id.into(),
                reason: format!("body is not {{\"schema\": ...}}: {e}"),
            })?;
            if !parsed.references.is_empty() {
                return Err(RegistryError::Unsupported {
                    id: id.into(),
                    reason: format!(
                        "it has {} schema references, which the relay does not resolve",
                        parsed.references.len()
                    ),
                });
            }
            let type_name = parsed.schema_type.as_deref().unwrap_or("AVRO");
            let format = DataFormat::parse(type_name).ok_or_else(|| RegistryError::Unsupported {
                id: id.into(),
                reason: format!("schemaType {type_name:?} is not AVRO, PROTOBUF or JSON"),
            })?;
            Ok(RegisteredSchema { format, definition: parsed.schema })
        }
        404 => Err(RegistryError::NotFound { id: id.into(), detail: message() }),
        401 | 403 => Err(RegistryError::Unauthorized { id: id.into(), detail: format!("HTTP {status}") }),
        _ => Err(RegistryError::Rejected {
            id: id.into(),
            status: format!("HTTP {status}"),
            transient: status == 429 || status >= 500,
            message: message(),
        }),
    }
}

/// The error and its causes, which name the failing step (connect, TLS, timeout).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_answers_give_the_schema_and_default_to_avro() {
        let avro = classify("1", 200, r#"{"schema": "\"string\""}"#).unwrap();
        assert_eq!(avro, RegisteredSchema { format: DataFormat::Avro, definition: "\"string\"".into() });
        let proto = classify("2", 200, r#"{"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}"#).unwrap();
        assert_eq!(proto.format, DataFormat::Protobuf);
        let json = classify("3", 200, r#"{"schema": "{}", "schemaType": "JSON", "references": []}"#).unwrap();
        assert_eq!(json.format, DataFormat::Json);
    }

    #[test]
    fn statuses_map_to_errors_with_retryability_decided_once() {
        let not_found = classify("7", 404, r#"{"error_code": 40403, "message": "Schema 7 not found"}"#).unwrap_err();
        assert_eq!(not_found, RegistryError::NotFound { id: "7".into(), detail: "Schema 7 not found".into() });
        assert!(!not_found.retryable());
        assert_eq!(
            classify("7", 401, "").unwrap_err(),
            RegistryError::Unauthorized { id: "7".into(), detail: "HTTP 401".into() }
        );
        let unavailable = classify("7", 503, "down").unwrap_err();
        assert!(unavailable.retryable(), "{unavailable}");
        assert!(classify("7", 429, "").unwrap_err().retryable());
        assert!(!classify("7", 422, "").unwrap_err().retryable());
    }

    #[test]
    fn references_unknown_types_and_bad_bodies_are_refused() {
        let refs =
            classify("5", 200, r#"{"schema": "x", "references": [{"name": "a.proto", "subject": "a", "version": 1}]}"#);
        assert!(matches!(refs, Err(RegistryError::Unsupported { .. })));
        assert!(matches!(
            classify("5", 200, r#"{"schema": "x", "schemaType": "XML"}"#),
            Err(RegistryError::Unsupported { .. })
        ));
        assert!(matches!(classify("5", 200, "<html>"), Err(RegistryError::Malformed { .. })));
    }

    /// A one-route HTTP server on 127.0.0.1 answering like a registry, recording the Authorization header.
    async fn serve(
        status: u16,
        body: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>) {
        use axum::extract::{OriginalUri, State};
        use axum::http::HeaderMap;
        type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;
        let seen: Seen = Default::default();
        let app = axum::Router::new().fallback(
            move |State(seen): State<Seen>, OriginalUri(uri): OriginalUri, headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                seen.lock().unwrap().push((uri.to_string(), auth));
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, app.with_state(seen.clone()))));
        (format!("http://{address}/"), seen)
    }

    struct OneSecret(&'static str);

    #[async_trait::async_trait]
    impl SecretSource for OneSecret {
        async fn secret_string(&self, _arn: &str) -> Result<String, crate::auth::SecretError> {
            Ok(self.0.to_string())
        }
    }

    #[tokio::test]
    async fn fetches_by_id_with_basic_auth_from_the_secret() {
        let (url, seen) = serve(200, r#"{"schema": "{\"type\": \"object\"}", "schemaType": "JSON"}"#).await;
        let access = [KafkaSchemaRegistryAccessConfig {
            kind: "BASIC_AUTH".into(),
            uri: "arn:aws:secretsmanager:us-east-1:123456789012:secret:sr".into(),
        }];
        let registry = ConfluentRegistry::connect(&url, &access, &OneSecret(r#"{"username": "u", "password": "p"}"#))
            .await
            .unwrap();
        let debug = format!("{registry:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("\"u\""), "{debug}");
        let schema = registry.fetch(SchemaRef::Confluent(42)).await.unwrap();
        assert_eq!(schema.format, DataFormat::Json);
        // base64("u:p") = dTpw
        assert_eq!(seen.lock().unwrap().clone(), vec![("/schemas/ids/42".to_string(), Some("Basic dTpw".to_string()))]);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let registry =
            ConfluentRegistry::connect(&format!("http://127.0.0.1:{port}"), &[], &OneSecret("")).await.unwrap();
        let error = registry.fetch(SchemaRef::Confluent(1)).await.unwrap_err();
        assert!(matches!(error, RegistryError::Unreachable { .. }), "{error}");
        assert!(error.retryable());
    }

    #[tokio::test]
    async fn a_secret_without_password_is_a_setup_error_naming_the_field_not_values() {
        let access = [KafkaSchemaRegistryAccessConfig {
            kind: "BASIC_AUTH".into(),
            uri: "arn:aws:secretsmanager:us-east-1:123456789012:secret:sr".into(),
        }];
        let error =
            ConfluentRegistry::connect("http://127.0.0.1:1", &access, &OneSecret(r#"{"username": "hidden-user"}"#))
                .await
                .unwrap_err()
                .to_string();
        assert!(error.contains("\"password\""), "{error}");
        assert!(!error.contains("hidden-user"), "{error}");
    }
}
