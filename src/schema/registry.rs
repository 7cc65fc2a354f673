//! The registry seam: one narrow trait with a Glue and a Confluent implementation, and the per-run cache
//! that fetches each schema once, compiles it once, and retries registry outages with backoff.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::format::{CompileError, CompiledSchema, RegisteredSchema};

/// Which schema a record names: a Confluent schema id or a Glue schema version UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaRef {
    /// Confluent's 4-byte schema id.
    Confluent(u32),
    /// Glue's schema version id.
    Glue(uuid::Uuid),
}

impl fmt::Display for SchemaRef {
    /// As AWS writes `schemaId`: the decimal id, or the hyphenated UUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaRef::Confluent(id) => write!(f, "{id}"),
            SchemaRef::Glue(uuid) => write!(f, "{}", uuid.as_hyphenated()),
        }
    }
}

/// Fetching a schema failed. Messages name the schema id and the registry's answer, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no schema with this id (Confluent 404 / 40403, Glue `EntityNotFoundException`).
    #[error("schema {id} is not in the registry: {detail}")]
    NotFound {
        /// The schema id.
        id: String,
        /// The registry's words.
        detail: String,
    },
    /// The registry refused the relay's credentials or role.
    #[error("the registry refused access to schema {id} ({detail}); check the mapping's AccessConfigs or the relay role's glue:GetSchemaVersion permission")]
    Unauthorized {
        /// The schema id.
        id: String,
        /// The status or error code.
        detail: String,
    },
    /// The registry could not be reached (connection, DNS, TLS handshake, timeout).
    #[error("cannot reach the registry for schema {id}: {message}")]
    Unreachable {
        /// The schema id.
        id: String,
        /// The transport error.
        message: String,
    },
    /// The registry answered with another error.
    #[error("the registry answered {status} for schema {id}: {message}")]
    Rejected {
        /// The schema id.
        id: String,
        /// HTTP status, or the AWS error code.
        status: String,
        /// Whether the answer is a transient one (HTTP 429 or 5xx, AWS throttling or internal errors).
        transient: bool,
        /// The registry's message.
        message: String,
    },
    /// The registry's answer is not what its API documents.
    #[error("the registry's answer for schema {id} is not understood: {reason}")]
    Malformed {
        /// The schema id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The schema is in a format the relay does not decode, or uses references it does not follow.
    #[error("schema {id} cannot be used: {reason}")]
    Unsupported {
        /// The schema id.
        id: String,
        /// Why.
        reason: String,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed: decided here, for every registry.
    pub fn retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Rejected { transient, .. } => *transient,
            RegistryError::NotFound { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Malformed { .. }
            | RegistryError::Unsupported { .. } => false,
        }
    }
}

/// A schema registry: Glue or Confluent-compatible.
#[async_trait::async_trait]
pub trait SchemaRegistry: Send + Sync {
    /// The schema `id` as the registry stores it.
    async fn fetch(&self, id: SchemaRef) -> Result<RegisteredSchema, RegistryError>;
}

/// How registry outages are retried within one lookup: `attempts` tries in all, waiting
/// [`crate::outcome::backoff`] between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per lookup, the first included.
    pub attempts: u32,
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries over about 3 seconds (0.2, 0.4, 0.8, 1.6 s, jittered): long enough for a registry restart
    /// or a load balancer failover, short enough to keep a run's time for delivery.
    fn default() -> Self {
        Self { attempts: 5, initial: Duration::from_millis(200), max: Duration::from_secs(5) }
    }
}

/// Looking a schema up failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The registry answered and the schema cannot be had (not found, unauthorized, unsupported).
    #[error(transparent)]
    Registry(RegistryError),
    /// The registry stayed unavailable through every retry (or already did earlier in this run).
    #[error("{0} (gave up after retries)")]
    Unavailable(RegistryError),
    /// The schema's text does not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
}

type Cell = Arc<OnceCell<Result<CompiledSchema, LookupError>>>;

/// Schemas fetched and compiled once per run, by id / version UUID. Answers are kept, failures too when
/// they are the registry's answer (not found, unauthorized, does not compile); an outage is not kept, but
/// once a lookup has exhausted its retries the registry counts as down for the rest of the run, so records
/// after it fail fast instead of each waiting through the backoff. Create one per run.
pub struct SchemaCache {
    registry: Arc<dyn SchemaRegistry>,
    retry: RetryPolicy,
    cells: Mutex<HashMap<SchemaRef, Cell>>,
    down: Mutex<Option<RegistryError>>,
}

impl fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.cells.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("SchemaCache").field("retry", &self.retry).field("cached", &cached).finish_non_exhaustive()
    }
}

impl SchemaCache {
    /// An empty cache over `registry`.
    pub fn new(registry: Arc<dyn SchemaRegistry>, retry: RetryPolicy) -> Self {
        Self { registry, retry, cells: Mutex::new(HashMap::new()), down: Mutex::new(None) }
    }

    /// The compiled schema `id`, fetching it on first use.
    pub async fn get(&self, id: SchemaRef) -> Result<CompiledSchema, LookupError> {
        let cell = {
            let mut cells = self.cells.lock().expect("schema cache lock");
            cells.entry(id).or_default().clone()
        };
        if let Some(done) = cell.get() {
            return done.clone();
        }
        match self.fetch_with_retries(id).await {
            // An outage is not cached: the next run, or a lookup after the registry recovers, tries again.
            Err(LookupError::Unavailable(error)) => Err(LookupError::Unavailable(error)),
            answer => cell.get_or_init(|| async { answer }).await.clone(),
        }
    }

    async fn fetch_with_retries(&self, id: SchemaRef) -> Result<CompiledSchema, LookupError> {
        if let Some(error) = self.down.lock().expect("schema cache lock").clone() {
            return Err(LookupError::Unavailable(error));
        }
        let mut attempt = 0;
        loop {
            match self.registry.fetch(id).await {
                Ok(schema) => return Ok(CompiledSchema::compile(&schema)?),
                Err(error) if error.retryable() => {
                    attempt += 1;
                    if attempt >= self.retry.attempts.max(1) {
                        tracing::warn!(error_code = "SCHEMA_REGISTRY_UNAVAILABLE", schema_id = %id, attempts = attempt, %error, "schema registry unavailable");
                        *self.down.lock().expect("schema cache lock") = Some(error.clone());
                        return Err(LookupError::Unavailable(error));
                    }
                    tokio::time::sleep(crate::outcome::backoff(attempt - 1, self.retry.initial, self.retry.max)).await;
                }
                Err(error) => return Err(LookupError::Registry(error)),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::format::DataFormat;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A registry that answers from a script, then from a fixed map, counting calls.
    #[derive(Default)]
    pub(crate) struct ScriptedRegistry {
        pub(crate) schemas: HashMap<SchemaRef, RegisteredSchema>,
        pub(crate) failures: Mutex<VecDeque<RegistryError>>,
        pub(crate) calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SchemaRegistry for ScriptedRegistry {
        async fn fetch(&self, id: SchemaRef) -> Result<RegisteredSchema, RegistryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(error) = self.failures.lock().unwrap().pop_front() {
                return Err(error);
            }
            self.schemas
                .get(&id)
                .cloned()
                .ok_or_else(|| RegistryError::NotFound { id: id.to_string(), detail: "Schema not found".into() })
        }
    }

    pub(crate) fn fast_retry(attempts: u32) -> RetryPolicy {
        RetryPolicy { attempts, initial: Duration::from_millis(1), max: Duration::from_millis(2) }
    }

    fn outage() -> RegistryError {
        RegistryError::Unreachable { id: "1".into(), message: "connection refused".into() }
    }

    fn registry_with_schema() -> ScriptedRegistry {
        let mut registry = ScriptedRegistry::default();
        registry
            .schemas
            .insert(SchemaRef::Confluent(1), RegisteredSchema::new(DataFormat::Json, r#"{"type":"object"}"#));
        registry
    }

    #[test]
    fn schema_ids_display_as_aws_writes_them() {
        assert_eq!(SchemaRef::Confluent(123).to_string(), "123");
        let uuid = uuid::Uuid::parse_str("B7B4A7F0-9C0E-4D1E-8B6A-4A4F7D1C2E3F").unwrap();
        assert_eq!(SchemaRef::Glue(uuid).to_string(), "b7b4a7f0-9c0e-4d1e-8b6a-4a4f7d1c2e3f");
    }

    #[test]
    fn only_outages_and_transient_answers_are_retryable() {
        assert!(outage().retryable());
        let rejected = |transient| RegistryError::Rejected {
            id: "1".into(),
            status: "503".into(),
            transient,
            message: String::new(),
        };
        assert!(rejected(true).retryable());
        assert!(!rejected(false).retryable());
        assert!(!RegistryError::NotFound { id: "1".into(), detail: String::new() }.retryable());
        assert!(!RegistryError::Unauthorized { id: "1".into(), detail: "401".into() }.retryable());
    }

    #[tokio::test]
    async fn each_schema_is_fetched_once_per_run() {
        let registry = Arc::new(registry_with_schema());
        let cache = SchemaCache::new(registry.clone(), fast_retry(3));
        for _ in 0..3 {
            assert_eq!(cache.get(SchemaRef::Confluent(1)).await.unwrap().format(), DataFormat::Json);
        }
        assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn not_found_is_cached_and_not_retried() {
        let registry = Arc::new(registry_with_schema());
        let cache = SchemaCache::new(registry.clone(), fast_retry(3));
        for _ in 0..2 {
            assert!(matches!(
                cache.get(SchemaRef::Confluent(9)).await,
                Err(LookupError::Registry(RegistryError::NotFound { .. }))
            ));
        }
        assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_short_outage_is_retried_through() {
        let registry = Arc::new(registry_with_schema());
        registry.failures.lock().unwrap().extend([outage(), outage()]);
        let cache = SchemaCache::new(registry.clone(), fast_retry(3));
        assert!(cache.get(SchemaRef::Confluent(1)).await.is_ok());
        assert_eq!(registry.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_long_outage_marks_the_registry_down_for_the_run_and_is_not_cached() {
        let registry = Arc::new(registry_with_schema());
        registry.failures.lock().unwrap().extend([outage(), outage(), outage()]);
        let cache = SchemaCache::new(registry.clone(), fast_retry(3));
        assert!(matches!(cache.get(SchemaRef::Confluent(1)).await, Err(LookupError::Unavailable(_))));
        assert_eq!(registry.calls.load(Ordering::SeqCst), 3);
        // Later records of the same run fail fast: no more calls.
        assert!(matches!(cache.get(SchemaRef::Confluent(1)).await, Err(LookupError::Unavailable(_))));
        assert_eq!(registry.calls.load(Ordering::SeqCst), 3);
        // The next run (a new cache) tries again and, the registry back, succeeds.
        let next_run = SchemaCache::new(registry.clone(), fast_retry(3));
        assert!(next_run.get(SchemaRef::Confluent(1)).await.is_ok());
    }

    #[tokio::test]
    async fn a_schema_that_does_not_compile_is_a_compile_error() {
        let mut registry = ScriptedRegistry::default();
        registry.schemas.insert(SchemaRef::Confluent(2), RegisteredSchema::new(DataFormat::Avro, "{"));
        let cache = SchemaCache::new(Arc::new(registry), fast_retry(1));
        assert!(matches!(cache.get(SchemaRef::Confluent(2)).await, Err(LookupError::Compile(_))));
    }
}
