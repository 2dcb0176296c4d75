//! Environments that drills run in. For now: the embedded S3 server that
//! the `local` environment and the tests use.

pub mod s3_server;
pub mod local;
