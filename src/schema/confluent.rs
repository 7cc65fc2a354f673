//! A Confluent-compatible registry over its REST API: `GET /schemas/ids/{id}`, with the `AccessConfigs`
//! AWS documents for it (`BASIC_AUTH`, `CLIENT_CERTIFICATE_TLS_AUTH`, `SERVER_ROOT_CA_CERTIFICATE`), each a
//! Secrets Manager secret read through [`crate::auth::SecretSource`].

use std::time::Duration;

use serde::Deserialize;

use super::format::{DataFormat, NamedSchema, RegisteredSchema};
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

/// The body of `GET /schemas/ids/{id}` and `GET /subjects/{subject}/versions/{version}` (the fields used).
#[derive(Debug, Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<SchemaReference>,
}

/// One entry of `references`.
#[derive(Debug, Clone, Deserialize)]
struct SchemaReference {
    name: String,
    subject: String,
    version: i64,
}

/// Most references followed for one schema (all levels): a registry cannot make the relay walk forever.
const MAX_REFERENCES: usize = 100;

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
        let body = self.get(&id_text, &format!("/schemas/ids/{numeric}")).await?;
        let mut schema = RegisteredSchema::new(format_of(&id_text, &body)?, body.schema);
        // References, depth first, so each comes before the schemas that use it.
        let mut pending: Vec<(SchemaReference, bool)> = body.references.into_iter().rev().map(|r| (r, false)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut bodies: std::collections::HashMap<String, SchemaBody> = std::collections::HashMap::new();
        while let Some((reference, expanded)) = pending.pop() {
            if expanded {
                let body = bodies.remove(&reference.name).expect("fetched before it was expanded");
                let format = format_of(&id_text, &body)?;
                schema.references.push(NamedSchema { name: reference.name, format, definition: body.schema });
                continue;
            }
            if !seen.insert(reference.name.clone()) {
                continue;
            }
            if seen.len() > MAX_REFERENCES {
                return Err(RegistryError::Unsupported {
                    id: id_text,
                    reason: format!("it references more than {MAX_REFERENCES} schemas"),
                });
            }
            let path = format!("/subjects/{}/versions/{}", urlencode(&reference.subject), reference.version);
            let body = self.get(&id_text, &path).await?;
            pending.push((reference.clone(), true));
            pending.extend(body.references.iter().rev().cloned().map(|r| (r, false)));
            bodies.insert(reference.name, body);
        }
        Ok(schema)
    }
}

impl ConfluentRegistry {
    /// `GET {base}{path}`, answered with a schema body, or the error the status means.
    async fn get(&self, id: &str, path: &str) -> Result<SchemaBody, RegistryError> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/vnd.schemaregistry.v1+json, application/json");
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| RegistryError::Unreachable {
            id: id.to_string(),
            // Without the URL: it is the configured one, and a URL could carry user info.
            message: crate::error::with_causes(&e.without_url()),
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| RegistryError::Unreachable { id: id.to_string(), message: crate::error::with_causes(&e.without_url()) })?;
        classify(id, status.as_u16(), &body)
    }
}

/// Percent-encodes a subject name for a URL path (subjects may hold `/`, `:` and the like).
fn urlencode(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A schema body's format: `schemaType`, absent meaning Avro.
fn format_of(id: &str, body: &SchemaBody) -> Result<DataFormat, RegistryError> {
    let type_name = body.schema_type.as_deref().unwrap_or("AVRO");
    DataFormat::parse(type_name).ok_or_else(|| RegistryError::Unsupported {
        id: id.into(),
        reason: format!("schemaType {type_name:?} is not AVRO, PROTOBUF or JSON"),
    })
}

/// The registry's answer → a schema body or the error; the whole decision on HTTP status is here.
fn classify(id: &str, status: u16, body: &str) -> Result<SchemaBody, RegistryError> {
    let message = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect())
    };
    match status {
        200 => serde_json::from_str(body).map_err(|e| RegistryError::Malformed {
            id: id.into(),
            reason: format!("body is not {{\"schema\": ...}}: {e}"),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_answers_give_the_schema_and_default_to_avro() {
        let avro = classify("1", 200, r#"{"schema": "\"string\""}"#).unwrap();
        assert_eq!((format_of("1", &avro).unwrap(), avro.schema.as_str()), (DataFormat::Avro, "\"string\""));
        let proto = classify("2", 200, r#"{"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}"#).unwrap();
        assert_eq!(format_of("2", &proto).unwrap(), DataFormat::Protobuf);
        let json = classify("3", 200, r#"{"schema": "{}", "schemaType": "JSON", "references": []}"#).unwrap();
        assert_eq!(format_of("3", &json).unwrap(), DataFormat::Json);
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
    fn unknown_types_and_bad_bodies_are_refused() {
        let xml = classify("5", 200, r#"{"schema": "x", "schemaType": "XML"}"#).unwrap();
        assert!(matches!(format_of("5", &xml), Err(RegistryError::Unsupported { .. })));
        assert!(matches!(classify("5", 200, "<html>"), Err(RegistryError::Malformed { .. })));
        assert_eq!(urlencode("orders-value"), "orders-value");
        assert_eq!(urlencode("a/b c"), "a%2Fb%20c");
    }

    /// A registry answering `routes` (path → body) with 200, anything else with Confluent's 404.
    async fn serve_routes(routes: &[(&str, serde_json::Value)]) -> String {
        let routes: std::collections::HashMap<String, String> =
            routes.iter().map(|(path, body)| (path.to_string(), body.to_string())).collect();
        let app = axum::Router::new().fallback(move |axum::extract::OriginalUri(uri): axum::extract::OriginalUri| {
            let answer = routes.get(uri.path()).cloned();
            async move {
                match answer {
                    Some(body) => (axum::http::StatusCode::OK, body),
                    None => {
                        (axum::http::StatusCode::NOT_FOUND, r#"{"error_code":40401,"message":"not found"}"#.to_string())
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, app)));
        format!("http://{address}")
    }

    #[tokio::test]
    async fn references_are_followed_by_subject_and_version_each_before_its_users() {
        // order.proto imports line.proto, which imports money.proto; order.proto also imports money.proto.
        let url = serve_routes(&[
            ("/schemas/ids/10", serde_json::json!({"schemaType": "PROTOBUF", "schema": "syntax = \"proto3\"; import \"line.proto\"; import \"money.proto\"; message Order { Line line = 1; Money total = 2; }",
                "references": [{"name": "line.proto", "subject": "line", "version": 2}, {"name": "money.proto", "subject": "money", "version": 1}]})),
            ("/subjects/line/versions/2", serde_json::json!({"subject": "line", "version": 2, "id": 11, "schemaType": "PROTOBUF",
                "schema": "syntax = \"proto3\"; import \"money.proto\"; message Line { string sku = 1; Money price = 2; }",
                "references": [{"name": "money.proto", "subject": "money", "version": 1}]})),
            ("/subjects/money/versions/1", serde_json::json!({"subject": "money", "version": 1, "id": 12, "schemaType": "PROTOBUF",
                "schema": "syntax = \"proto3\"; message Money { int64 cents = 1; }"})),
        ])
        .await;
        let registry = ConfluentRegistry::connect(&url, &[], &OneSecret("")).await.unwrap();
        let schema = registry.fetch(SchemaRef::Confluent(10)).await.unwrap();
        let names: Vec<&str> = schema.references.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["money.proto", "line.proto"]);
        // And it compiles and decodes: Order{line: {sku: "A", price: {cents: 5}}} is 0a 07 0a 01 41 12 02 08 05.
        let compiled = crate::schema::CompiledSchema::compile(&schema).unwrap();
        let decoded =
            compiled.decode(&[0, 0x0a, 7, 0x0a, 1, b'A', 0x12, 2, 8, 5], crate::schema::Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"line": {"sku": "A", "price": {"cents": "5"}}}));
        // A reference the registry does not have: the schema cannot be had.
        let url = serve_routes(&[(
            "/schemas/ids/1",
            serde_json::json!({"schema": "\"string\"",
            "references": [{"name": "x", "subject": "gone", "version": 1}]}),
        )])
        .await;
        let registry = ConfluentRegistry::connect(&url, &[], &OneSecret("")).await.unwrap();
        assert!(matches!(registry.fetch(SchemaRef::Confluent(1)).await, Err(RegistryError::NotFound { .. })));
    }

    #[tokio::test]
    async fn avro_references_resolve_named_types() {
        let money = r#"{"type": "record", "name": "Money", "namespace": "demo", "fields": [{"name": "cents", "type": "long"}]}"#;
        let order = r#"{"type": "record", "name": "Order", "namespace": "demo", "fields": [{"name": "total", "type": "demo.Money"}]}"#;
        let url = serve_routes(&[
            ("/schemas/ids/3", serde_json::json!({"schema": order, "references": [{"name": "demo.Money", "subject": "money", "version": 1}]})),
            ("/subjects/money/versions/1", serde_json::json!({"schema": money})),
        ])
        .await;
        let registry = ConfluentRegistry::connect(&url, &[], &OneSecret("")).await.unwrap();
        let compiled =
            crate::schema::CompiledSchema::compile(&registry.fetch(SchemaRef::Confluent(3)).await.unwrap()).unwrap();
        // cents = 21 → zigzag 42.
        let decoded = compiled.decode(&[42], crate::schema::Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"total": {"cents": 21}}));
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
