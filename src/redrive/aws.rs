//! The SQS and S3 calls of a redrive: receive, delete and release messages; list, read and checkpoint
//! objects. Each failing call becomes its own [`RedriveError`] variant.

use aws_sdk_s3::primitives::ByteStream;

use super::error::RedriveError;
use crate::destination::{AwsError, AwsErrorKind};

/// How long a received message stays invisible to other readers while the redrive works on it; kept
/// messages are made visible again at the end, so a failed redrive leaves the queue as it found it.
const VISIBILITY_TIMEOUT_SECONDS: i32 = 900;

/// One SQS message.
#[derive(Debug, Clone)]
pub struct Message {
    /// SQS's message id.
    pub message_id: String,
    /// For deleting or releasing it.
    pub receipt_handle: String,
    /// The body: an invocation record, or SNS's envelope around one.
    pub body: String,
}

/// SQS calls on one queue.
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl Queue {
    /// The queue at `url`, on clients built from `sdk_config`.
    pub fn new(sdk_config: &aws_config::SdkConfig, url: &str) -> Self {
        Self { client: aws_sdk_sqs::Client::new(sdk_config), url: url.to_string() }
    }

    /// Up to 10 messages (waiting at most a second for any); empty when the queue has none visible.
    pub async fn receive(&self) -> Result<Vec<Message>, RedriveError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY_TIMEOUT_SECONDS)
            .send()
            .await
            .map_err(|e| RedriveError::ReceiveMessage {
                queue_url: self.url.clone(),
                source: Box::new(AwsError::from_sdk(e)),
            })?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Message {
                message_id: m.message_id.unwrap_or_default(),
                receipt_handle: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes a message whose batch was redriven.
    pub async fn delete(&self, message: &Message) -> Result<(), RedriveError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt_handle)
            .send()
            .await
            .map_err(|e| RedriveError::DeleteMessage {
                queue_url: self.url.clone(),
                message_id: message.message_id.clone(),
                source: Box::new(AwsError::from_sdk(e)),
            })?;
        Ok(())
    }

    /// Makes a kept message visible again at once.
    pub async fn release(&self, message: &Message) -> Result<(), RedriveError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| RedriveError::ChangeMessageVisibility {
                queue_url: self.url.clone(),
                message_id: message.message_id.clone(),
                source: Box::new(AwsError::from_sdk(e)),
            })?;
        Ok(())
    }
}

/// S3 calls on one bucket.
pub struct Bucket {
    client: aws_sdk_s3::Client,
    /// The bucket's name.
    pub name: String,
}

impl Bucket {
    /// The bucket `name`; path-style addressing when the endpoint is overridden (emulators).
    pub fn new(sdk_config: &aws_config::SdkConfig, name: &str) -> Self {
        let overridden = sdk_config.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
        let config = aws_sdk_s3::config::Builder::from(sdk_config).force_path_style(overridden).build();
        Self { client: aws_sdk_s3::Client::from_conf(config), name: name.to_string() }
    }

    /// Every key under `prefix`, in S3's (lexicographic) order.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, RedriveError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| RedriveError::ListObjects {
                    bucket: self.name.clone(),
                    prefix: prefix.to_string(),
                    source: Box::new(AwsError::from_sdk(e)),
                })?;
            keys.extend(output.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match output.next_continuation_token() {
                Some(next) if output.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    /// The object's bytes.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, RedriveError> {
        let error = |source| RedriveError::GetObject {
            bucket: self.name.clone(),
            key: key.to_string(),
            source: Box::new(source),
        };
        let output = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| error(AwsError::from_sdk(e)))?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| error(AwsError::transport(AwsErrorKind::Response, &e.to_string())))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Whether `key` exists (a checkpoint marker).
    pub async fn exists(&self, key: &str) -> Result<bool, RedriveError> {
        match self.client.head_object().bucket(&self.name).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(RedriveError::HeadCheckpoint {
                bucket: self.name.clone(),
                key: key.to_string(),
                source: Box::new(AwsError::from_sdk(e)),
            }),
        }
    }

    /// Writes the checkpoint marker `key`.
    pub async fn put_checkpoint(&self, key: &str, body: Vec<u8>) -> Result<(), RedriveError> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| RedriveError::PutCheckpoint {
                bucket: self.name.clone(),
                key: key.to_string(),
                source: Box::new(AwsError::from_sdk(e)),
            })?;
        Ok(())
    }
}
