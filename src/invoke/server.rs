//! An in-process server speaking the Lambda Invoke API on 127.0.0.1, for tests and the demo.
