pub(crate) mod async_builder;
pub(crate) mod async_runner;

pub use self::{async_builder::AsyncBuilder, async_runner::AsyncRunner};

#[cfg(feature = "blocking")]
pub(crate) mod sync_builder;

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use self::sync_builder::SyncBuilder;

#[cfg(feature = "blocking")]
pub(crate) mod sync_runner;

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use self::sync_runner::SyncRunner;
