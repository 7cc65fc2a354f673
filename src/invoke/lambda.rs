//! [`Invoke`](super::Invoke) on aws-sdk-lambda.
