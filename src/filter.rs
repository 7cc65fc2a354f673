//! `FilterCriteria`: EventBridge patterns matched against each record (SPEC section 7).

/// A parsed filter pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    raw: serde_json::Value,
}

/// A pattern that is not valid EventBridge syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl Pattern {
    /// Parses a pattern given as a JSON string.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| PatternError(e.to_string()))?;
        if !raw.is_object() {
            return Err(PatternError("a pattern must be a JSON object".into()));
        }
        Ok(Self { raw })
    }
}
