//! Authentication and TLS for the Kafka connection, from `SourceAccessConfigurations` and Secrets Manager
//! (SPEC section 6).
