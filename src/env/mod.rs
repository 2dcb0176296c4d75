//! Environments that drills run in. For now: the embedded S3 server that
//! the `local` environment and the tests use.

pub mod local;
pub mod s3_server;
