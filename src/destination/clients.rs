//! One narrow trait per destination service, each with one production implementation on the AWS SDK, so
//! the delivery logic in [`super::OnFailureDestination`] is tested with fakes and the adapters against a
//! real emulator (`tests/destination_moto.rs`).

use aws_sdk_s3::primitives::ByteStream;

use super::error::AwsError;

/// The SQS operations a destination needs.
#[async_trait::async_trait]
pub trait SqsSend: Send + Sync {
    /// `GetQueueUrl` with `QueueName` and `QueueOwnerAWSAccountId`.
    async fn queue_url(&self, queue_name: &str, owner_account_id: &str) -> Result<String, AwsError>;

    /// `SendMessage`; returns the message id.
    async fn send_message(&self, queue_url: &str, body: String) -> Result<String, AwsError>;
}

/// The SNS operation a destination needs.
#[async_trait::async_trait]
pub trait SnsPublish: Send + Sync {
    /// `Publish` to a topic; returns the message id.
    async fn publish(&self, topic_arn: &str, message: String) -> Result<String, AwsError>;
}

/// The S3 operation a destination needs.
#[async_trait::async_trait]
pub trait S3Put: Send + Sync {
    /// `PutObject` of a JSON document.
    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError>;

    /// `PutObject` of opaque bytes (a large record's value); by default the same call as [`Self::put_object`].
    async fn put_bytes(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
        self.put_object(bucket, key, body).await
    }
}

/// [`SqsSend`] on aws-sdk-sqs.
#[derive(Debug, Clone)]
pub struct AwsSqs(pub aws_sdk_sqs::Client);

#[async_trait::async_trait]
impl SqsSend for AwsSqs {
    async fn queue_url(&self, queue_name: &str, owner_account_id: &str) -> Result<String, AwsError> {
        let output = self
            .0
            .get_queue_url()
            .queue_name(queue_name)
            .queue_owner_aws_account_id(owner_account_id)
            .send()
            .await
            .map_err(AwsError::from_sdk)?;
        Ok(output.queue_url.unwrap_or_default())
    }

    async fn send_message(&self, queue_url: &str, body: String) -> Result<String, AwsError> {
        let output =
            self.0.send_message().queue_url(queue_url).message_body(body).send().await.map_err(AwsError::from_sdk)?;
        Ok(output.message_id.unwrap_or_default())
    }
}

/// [`SnsPublish`] on aws-sdk-sns.
#[derive(Debug, Clone)]
pub struct AwsSns(pub aws_sdk_sns::Client);

#[async_trait::async_trait]
impl SnsPublish for AwsSns {
    async fn publish(&self, topic_arn: &str, message: String) -> Result<String, AwsError> {
        let output = self.0.publish().topic_arn(topic_arn).message(message).send().await.map_err(AwsError::from_sdk)?;
        Ok(output.message_id.unwrap_or_default())
    }
}

/// [`S3Put`] on aws-sdk-s3.
#[derive(Debug, Clone)]
pub struct AwsS3(pub aws_sdk_s3::Client);

#[async_trait::async_trait]
impl S3Put for AwsS3 {
    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
        self.0
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(AwsError::from_sdk)?;
        Ok(())
    }

    async fn put_bytes(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
        self.0
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(AwsError::from_sdk)?;
        Ok(())
    }
}
