//! Redis group provider (work in progress).

use hub_core::{Backplane, BindContext, GroupError, GroupProvider};
use std::sync::Arc;

/// Groups shared by every hub server connected to one Redis.
#[derive(Debug, Clone)]
pub struct RedisProvider {
    url: String,
}

impl RedisProvider {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, GroupError> {
        Ok(RedisProvider { url: url.to_owned() })
    }
}

impl GroupProvider for RedisProvider {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn bind(&self, _ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        Err(GroupError::Unavailable {
            backplane: "redis",
            message: format!("not implemented yet ({})", self.url),
            source: None,
        })
    }
}
