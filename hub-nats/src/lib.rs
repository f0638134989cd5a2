//! NATS group provider (work in progress).

use hub_core::{Backplane, BindContext, GroupError, GroupProvider};
use std::sync::Arc;

/// Groups shared by every hub server connected to one NATS.
#[derive(Debug, Clone)]
pub struct NatsProvider {
    url: String,
}

impl NatsProvider {
    /// Connects to NATS at `url`.
    pub async fn connect(url: &str) -> Result<Self, GroupError> {
        Ok(NatsProvider { url: url.to_owned() })
    }
}

impl GroupProvider for NatsProvider {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn bind(&self, _ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        Err(GroupError::Unavailable {
            backplane: "nats",
            message: format!("not implemented yet ({})", self.url),
            source: None,
        })
    }
}
