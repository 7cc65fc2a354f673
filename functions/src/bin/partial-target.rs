//! Records every Kafka record it receives (see the crate docs) and reports the first record of each
//! partition whose value starts with `fail` as a batch item failure, once per record, so the retry succeeds.

use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use relay_test_functions::{handle, BatchResponse};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<KafkaEvent>| async move {
        let function = event.context.env_config.function_name.clone();
        Ok::<BatchResponse, Error>(handle(&function, &event.payload, true)?)
    }))
    .await
}
