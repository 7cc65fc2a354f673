//! The three data formats: compiling a registry's schema text once, then decoding and validating payloads
//! against it (Avro with apache-avro, Protobuf with prost-reflect over a `.proto` compiled by protox, JSON
//! Schema with jsonschema).

use std::sync::Arc;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::wire;

/// A schema's data format, as AWS writes it in `dataFormat` and Glue in `DataFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// Apache Avro.
    Avro,
    /// Protocol Buffers.
    Protobuf,
    /// JSON Schema.
    Json,
}

impl DataFormat {
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Avro => "AVRO",
            DataFormat::Protobuf => "PROTOBUF",
            DataFormat::Json => "JSON",
        }
    }

    /// Parses Glue's `DataFormat` or Confluent's `schemaType` (absent there means Avro).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "AVRO" => Some(DataFormat::Avro),
            "PROTOBUF" => Some(DataFormat::Protobuf),
            "JSON" => Some(DataFormat::Json),
            _ => None,
        }
    }
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// Its format.
    pub format: DataFormat,
    /// Its text: Avro JSON, a `.proto` file (or a base64 `FileDescriptorProto`), or a JSON Schema document.
    pub definition: String,
    /// The schemas it references (Confluent `references`), every level, each before those that use it.
    pub references: Vec<NamedSchema>,
}

impl RegisteredSchema {
    /// A schema without references.
    pub fn new(format: DataFormat, definition: impl Into<String>) -> Self {
        Self { format, definition: definition.into(), references: Vec::new() }
    }
}

/// A referenced schema under the name the referencing schema uses for it (a `.proto` import path, an Avro
/// full name, a JSON Schema `$ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSchema {
    /// The reference's `name`.
    pub name: String,
    /// Its format and text.
    pub format: DataFormat,
    /// Its text.
    pub definition: String,
}

/// The registry's schema text does not compile. The record is undecodable, as AWS treats a schema it
/// cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} schema does not compile: {reason}")]
pub struct CompileError {
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub format: &'static str,
    /// The library's message (about the schema text, never a record).
    pub reason: String,
}

/// A payload does not decode or does not validate against its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The framing inside the payload (Protobuf message indexes) is wrong.
    #[error(transparent)]
    Framing(#[from] wire::FramingError),
    /// The message indexes point at no message type of the schema.
    #[error("Protobuf message index {0} names no message type of the schema")]
    NoSuchMessage(String),
    /// The bytes do not decode with the schema.
    #[error("{format} payload does not decode: {reason}")]
    Decode {
        /// `AVRO`, `PROTOBUF` or `JSON`.
        format: &'static str,
        /// The library's message.
        reason: String,
    },
    /// Bytes remain after a complete Avro datum.
    #[error("AVRO payload has {0} bytes after the datum")]
    TrailingBytes(usize),
    /// A JSON payload violates its JSON Schema; the message masks the record's values.
    #[error("JSON payload violates its schema at {path:?}: {reason}")]
    Invalid {
        /// JSON pointer to the offending value.
        path: String,
        /// The rule broken, values masked.
        reason: String,
    },
}

/// Which registry framed the payload: Protobuf message selection differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Confluent: message index path.
    Confluent,
    /// Glue: one index into all message types sorted by full name.
    Glue,
}

/// A payload decoded and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The record as JSON (for `EventRecordFormat: JSON` and for filtering).
    pub json: serde_json::Value,
    /// The payload without framing and message indexes (for `EventRecordFormat: SOURCE`).
    pub source: Vec<u8>,
}

/// A schema compiled once per run.
#[derive(Clone)]
pub enum CompiledSchema {
    /// An Avro schema, and the named schemas it references.
    Avro(Arc<apache_avro::Schema>, Arc<Vec<apache_avro::Schema>>),
    /// A compiled `.proto` file.
    Protobuf {
        /// Every descriptor of the file and its imports.
        pool: DescriptorPool,
        /// The file's message types in declaration order (Confluent's top-level indexes).
        top_level: Vec<MessageDescriptor>,
        /// All the file's message types, nested ones included, sorted by full name (Glue's index).
        sorted: Vec<MessageDescriptor>,
    },
    /// A JSON Schema validator.
    Json(Arc<jsonschema::Validator>),
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompiledSchema::Avro(..) => "CompiledSchema::Avro",
            CompiledSchema::Protobuf { .. } => "CompiledSchema::Protobuf",
            CompiledSchema::Json(_) => "CompiledSchema::Json",
        })
    }
}

/// The virtual file name the registry's `.proto` text is compiled under.
const PROTO_FILE: &str = "registry-schema.proto";

/// Serves the registry's `.proto` files by name (the schema's, and its references' under their import
/// paths), each as text or as a base64 `FileDescriptorProto`.
struct RegistryProto(std::collections::HashMap<String, String>);

impl protox::file::FileResolver for RegistryProto {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let Some(definition) = self.0.get(name) else { return Err(protox::Error::file_not_found(name)) };
        match descriptor(definition) {
            Some(mut file) => {
                file.name = Some(name.to_string());
                Ok(protox::file::File::from_file_descriptor_proto(file))
            }
            None => protox::file::File::from_source(name, definition),
        }
    }
}

/// A base64 `FileDescriptorProto`, which Confluent registries also hold (and serve with
/// `?format=serialized`), and which confluent-kafka-python registers.
fn descriptor(definition: &str) -> Option<prost_reflect::prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    use prost_reflect::prost::Message as _;
    if definition.contains(';') {
        return None; // .proto text
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(definition.trim()).ok()?;
    prost_reflect::prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

impl CompiledSchema {
    /// Compiles a registry's schema.
    pub fn compile(schema: &RegisteredSchema) -> Result<Self, CompileError> {
        let format = schema.format.as_str();
        let fail = |reason: String| CompileError { format, reason };
        match schema.format {
            DataFormat::Avro => {
                let references =
                    schema.references.iter().filter(|r| r.format == DataFormat::Avro).map(|r| r.definition.as_str());
                apache_avro::Schema::parse_str_with_list(&schema.definition, references)
                    .map(|(s, named)| CompiledSchema::Avro(Arc::new(s), Arc::new(named)))
                    .map_err(|e| fail(e.to_string()))
            }
            DataFormat::Json => {
                let document: serde_json::Value =
                    serde_json::from_str(&schema.definition).map_err(|e| fail(e.to_string()))?;
                let mut options = jsonschema::options();
                for reference in schema.references.iter().filter(|r| r.format == DataFormat::Json) {
                    let contents: serde_json::Value = serde_json::from_str(&reference.definition)
                        .map_err(|e| fail(format!("{}: {e}", reference.name)))?;
                    // A `$ref` to the reference's name resolves against the schema's base URI (jsonschema's
                    // default for a schema without `$id`), or names it absolutely.
                    let relative = format!("json-schema:///{}", reference.name.trim_start_matches('/'));
                    options = options
                        .with_resource(relative, jsonschema::Resource::from_contents(contents.clone()))
                        .with_resource(reference.name.clone(), jsonschema::Resource::from_contents(contents));
                }
                options.build(&document).map(|v| CompiledSchema::Json(Arc::new(v))).map_err(|e| fail(e.to_string()))
            }
            DataFormat::Protobuf => {
                let pool = compile_proto(schema).map_err(fail)?;
                let file = pool.get_file_by_name(PROTO_FILE).ok_or_else(|| fail("compiled file is missing".into()))?;
                let top_level: Vec<MessageDescriptor> = file.messages().collect();
                // Level order, as the Glue SerDe library collects them, then sorted by full name.
                let mut sorted = Vec::new();
                let mut queue: std::collections::VecDeque<MessageDescriptor> = top_level.iter().cloned().collect();
                while let Some(message) = queue.pop_front() {
                    queue.extend(message.child_messages().filter(|m| !m.is_map_entry()));
                    sorted.push(message);
                }
                sorted.sort_by(|a, b| a.full_name().cmp(b.full_name()));
                Ok(CompiledSchema::Protobuf { pool, top_level, sorted })
            }
        }
    }

    /// The schema's format.
    pub fn format(&self) -> DataFormat {
        match self {
            CompiledSchema::Avro(..) => DataFormat::Avro,
            CompiledSchema::Protobuf { .. } => DataFormat::Protobuf,
            CompiledSchema::Json(_) => DataFormat::Json,
        }
    }

    /// Decodes and validates `payload` (the bytes after the registry's header).
    pub fn decode(&self, payload: &[u8], framing: Framing) -> Result<Decoded, PayloadError> {
        match self {
            CompiledSchema::Avro(schema, named) => {
                let mut reader = payload;
                let value = apache_avro::from_avro_datum_schemata(schema, named.iter().collect(), &mut reader, None)
                    .map_err(|e| PayloadError::Decode { format: "AVRO", reason: e.to_string() })?;
                if !reader.is_empty() {
                    return Err(PayloadError::TrailingBytes(reader.len()));
                }
                let json = serde_json::Value::try_from(value)
                    .map_err(|e| PayloadError::Decode { format: "AVRO", reason: e.to_string() })?;
                Ok(Decoded { json, source: payload.to_vec() })
            }
            CompiledSchema::Json(validator) => {
                let json: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| PayloadError::Decode { format: "JSON", reason: e.to_string() })?;
                if let Some(error) = validator.iter_errors(&json).next() {
                    return Err(PayloadError::Invalid {
                        path: error.instance_path().to_string(),
                        reason: error.masked().to_string(),
                    });
                }
                Ok(Decoded { json, source: payload.to_vec() })
            }
            CompiledSchema::Protobuf { top_level, sorted, .. } => {
                let (descriptor, message) = match framing {
                    Framing::Confluent => {
                        let (path, message) = wire::confluent_message_indexes(payload)?;
                        (confluent_message(top_level, &path)?, message)
                    }
                    Framing::Glue => {
                        let (index, message) = wire::glue_message_index(payload)?;
                        let descriptor =
                            sorted.get(index).cloned().ok_or_else(|| PayloadError::NoSuchMessage(index.to_string()))?;
                        (descriptor, message)
                    }
                };
                let decoded = DynamicMessage::decode(descriptor, message)
                    .map_err(|e| PayloadError::Decode { format: "PROTOBUF", reason: e.to_string() })?;
                let json = serde_json::to_value(&decoded)
                    .map_err(|e| PayloadError::Decode { format: "PROTOBUF", reason: e.to_string() })?;
                Ok(Decoded { json, source: message.to_vec() })
            }
        }
    }
}

/// Compiles the schema's `.proto` (as [`PROTO_FILE`]) with its references under their import paths, and
/// Google's well-known types for imports of those.
fn compile_proto(schema: &RegisteredSchema) -> Result<DescriptorPool, String> {
    let mut files: std::collections::HashMap<String, String> =
        schema.references.iter().map(|r| (r.name.clone(), r.definition.clone())).collect();
    files.insert(PROTO_FILE.to_string(), schema.definition.clone());
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(RegistryProto(files));
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(PROTO_FILE).map_err(|e| e.to_string())?;
    Ok(compiler.descriptor_pool())
}

/// Follows a Confluent message index path: the top-level message, then nested ones.
fn confluent_message(top_level: &[MessageDescriptor], path: &[usize]) -> Result<MessageDescriptor, PayloadError> {
    let missing = || PayloadError::NoSuchMessage(format!("{path:?}"));
    let mut current = top_level.get(*path.first().ok_or_else(missing)?).cloned().ok_or_else(missing)?;
    for index in &path[1..] {
        let next = current.child_messages().filter(|m| !m.is_map_entry()).nth(*index);
        current = next.ok_or_else(missing)?;
    }
    Ok(current)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const AVRO_ORDER: &str = r#"{"type":"record","name":"Order","namespace":"demo","fields":[
        {"name":"id","type":"long"},{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
        {"name":"note","type":["null","string"],"default":null}]}"#;

    pub(crate) const PROTO_ORDER: &str = r#"syntax = "proto3";
package demo;
import "google/protobuf/timestamp.proto";
message Order {
  int64 id = 1;
  string status = 2;
  message Line { string sku = 1; int32 quantity = 2; }
  repeated Line lines = 3;
  google.protobuf.Timestamp at = 4;
}
message Alpha { string name = 1; }
"#;

    pub(crate) const JSON_ORDER: &str = r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object",
        "properties":{"id":{"type":"integer"},"status":{"enum":["NEW","PAID"]}},"required":["id","status"]}"#;

    pub(crate) fn compile(format: DataFormat, definition: &str) -> CompiledSchema {
        CompiledSchema::compile(&RegisteredSchema::new(format, definition)).expect("compiles")
    }

    /// Avro binary for {"id": 42, "status": "PAID", "note": "rush"}, written by apache-avro itself.
    pub(crate) fn avro_order() -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(AVRO_ORDER).unwrap();
        let mut record = apache_avro::types::Record::new(&schema).unwrap();
        record.put("id", 42i64);
        record.put("status", apache_avro::types::Value::Enum(1, "PAID".into()));
        record.put("note", apache_avro::types::Value::Union(1, Box::new("rush".into())));
        apache_avro::to_avro_datum(&schema, record).unwrap()
    }

    /// Protobuf bytes of demo.Order{id: 7, status: "NEW", lines: [{sku: "A-1", quantity: 2}]}, built by hand
    /// from the wire format so the decoder is checked against bytes it did not produce.
    pub(crate) fn proto_order() -> Vec<u8> {
        let line = [0x0a, 3, b'A', b'-', b'1', 0x10, 2];
        let mut out = vec![0x08, 7, 0x12, 3, b'N', b'E', b'W', 0x1a, line.len() as u8];
        out.extend_from_slice(&line);
        out
    }

    #[test]
    fn avro_decodes_to_plain_json_and_keeps_source_bytes() {
        let schema = compile(DataFormat::Avro, AVRO_ORDER);
        let bytes = avro_order();
        let decoded = schema.decode(&bytes, Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"id": 42, "status": "PAID", "note": "rush"}));
        assert_eq!(decoded.source, bytes);
    }

    #[test]
    fn avro_rejects_truncated_and_trailing_bytes() {
        let schema = compile(DataFormat::Avro, AVRO_ORDER);
        let bytes = avro_order();
        // Cut inside the enum (apache-avro reads a union cut at its index as null, so cut before it).
        let truncated = schema.decode(&bytes[..1], Framing::Confluent);
        assert!(matches!(truncated, Err(PayloadError::Decode { format: "AVRO", .. })), "{truncated:?}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(schema.decode(&longer, Framing::Confluent), Err(PayloadError::TrailingBytes(1)));
    }

    #[test]
    fn json_schema_validates_and_masks_values_in_errors() {
        let schema = compile(DataFormat::Json, JSON_ORDER);
        let ok = schema.decode(br#"{"id": 1, "status": "NEW"}"#, Framing::Glue).unwrap();
        assert_eq!(ok.json, serde_json::json!({"id": 1, "status": "NEW"}));
        assert_eq!(ok.source, br#"{"id": 1, "status": "NEW"}"#.to_vec());
        match schema.decode(br#"{"id": 1, "status": "secret-value"}"#, Framing::Glue) {
            Err(PayloadError::Invalid { path, reason }) => {
                assert_eq!(path, "/status");
                assert!(!reason.contains("secret-value"), "{reason}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
        assert!(matches!(schema.decode(b"not json", Framing::Glue), Err(PayloadError::Decode { format: "JSON", .. })));
    }

    #[test]
    fn protobuf_confluent_indexes_select_top_level_and_nested_messages() {
        let schema = compile(DataFormat::Protobuf, PROTO_ORDER);
        let mut framed = vec![0u8];
        framed.extend(proto_order());
        let decoded = schema.decode(&framed, Framing::Confluent).unwrap();
        assert_eq!(
            decoded.json,
            serde_json::json!({"id": "7", "status": "NEW", "lines": [{"sku": "A-1", "quantity": 2}]})
        );
        assert_eq!(decoded.source, proto_order());
        // [0, 0]: Order.Line.
        let decoded = schema.decode(&[4, 0, 0, 0x0a, 1, b'Z'], Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"sku": "Z"}));
        // [1]: Alpha.
        let decoded = schema.decode(&[2, 2, 0x0a, 1, b'q'], Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"name": "q"}));
        assert_eq!(schema.decode(&[2, 6, 0x0a], Framing::Confluent), Err(PayloadError::NoSuchMessage("[3]".into())));
    }

    #[test]
    fn protobuf_glue_index_counts_all_messages_sorted_by_full_name() {
        let schema = compile(DataFormat::Protobuf, PROTO_ORDER);
        // Sorted: demo.Alpha = 0, demo.Order = 1, demo.Order.Line = 2.
        let mut framed = vec![1u8];
        framed.extend(proto_order());
        assert_eq!(schema.decode(&framed, Framing::Glue).unwrap().json["status"], "NEW");
        let decoded = schema.decode(&[0, 0x0a, 1, b'q'], Framing::Glue).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"name": "q"}));
        let decoded = schema.decode(&[2, 0x10, 5], Framing::Glue).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"quantity": 5}));
        assert_eq!(schema.decode(&[3], Framing::Glue), Err(PayloadError::NoSuchMessage("3".into())));
    }

    #[test]
    fn protobuf_rejects_bytes_that_are_not_the_message() {
        let schema = compile(DataFormat::Protobuf, PROTO_ORDER);
        // Field 2 (status, a string) with a length running past the end.
        assert!(matches!(
            schema.decode(&[0, 0x12, 50, b'x'], Framing::Confluent),
            Err(PayloadError::Decode { format: "PROTOBUF", .. })
        ));
    }

    #[test]
    fn protobuf_schema_may_be_a_base64_file_descriptor() {
        use base64::Engine as _;
        // The FileDescriptorProto of `package demo; message Alpha { string name = 1; }`, encoded by hand:
        // name "a.proto", package "demo", message_type { name "Alpha" field { name "name" number 1
        // label OPTIONAL type STRING json_name "name" } }.
        let field = [&[0x0a, 4][..], b"name", &[0x18, 1, 0x20, 1, 0x28, 9]].concat();
        let message = [&[0x0a, 5][..], b"Alpha", &[0x12, field.len() as u8], &field].concat();
        let file = [&[0x0a, 7][..], b"a.proto", &[0x12, 4], b"demo", &[0x22, message.len() as u8], &message].concat();
        let definition = base64::engine::general_purpose::STANDARD.encode(file);
        let schema = compile(DataFormat::Protobuf, &definition);
        let decoded = schema.decode(&[0, 0x0a, 2, b'h', b'i'], Framing::Confluent).unwrap();
        assert_eq!(decoded.json, serde_json::json!({"name": "hi"}));
    }

    #[test]
    fn json_schema_references_resolve_by_name() {
        let mut schema = RegisteredSchema::new(
            DataFormat::Json,
            r#"{"type": "object", "properties": {"customer": {"$ref": "customer.json"}}, "required": ["customer"]}"#,
        );
        schema.references.push(NamedSchema {
            name: "customer.json".into(),
            format: DataFormat::Json,
            definition: r#"{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}"#
                .into(),
        });
        let compiled = CompiledSchema::compile(&schema).expect("compiles with its reference");
        assert!(compiled.decode(br#"{"customer": {"name": "Ada"}}"#, Framing::Confluent).is_ok());
        let invalid = compiled.decode(br#"{"customer": {"name": 7}}"#, Framing::Confluent);
        assert!(
            matches!(invalid, Err(PayloadError::Invalid { ref path, .. }) if path == "/customer/name"),
            "{invalid:?}"
        );
    }

    #[test]
    fn schemas_that_do_not_compile_are_reported_with_their_format() {
        for (format, text) in
            [(DataFormat::Avro, "{\"type\": \"recrod\"}"), (DataFormat::Json, "{"), (DataFormat::Protobuf, "message {")]
        {
            let error = CompiledSchema::compile(&RegisteredSchema::new(format, text)).unwrap_err();
            assert_eq!(error.format, format.as_str());
        }
    }

    #[test]
    fn data_format_names_round_trip() {
        for format in [DataFormat::Avro, DataFormat::Protobuf, DataFormat::Json] {
            assert_eq!(DataFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(DataFormat::parse("XML"), None);
    }
}
