//! Relays job events from PostgreSQL (LISTEN on the jobs' events channel) to in-process
//! subscribers, which the pages stream to browsers as server-sent events.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::jobs::{EVENTS_CHANNEL, JobEvent};

/// Fan-out of job events to every open event stream of this process.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<JobEvent>,
}

impl EventHub {
    /// Start relaying; the task lives as long as some hub clone or subscriber does.
    pub fn start(pool: PgPool) -> Self {
        let (sender, _) = broadcast::channel(1024);
        let relay = sender.downgrade();
        tokio::spawn(async move {
            loop {
                let result: Result<(), sqlx::Error> = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(EVENTS_CHANNEL).await?;
                    loop {
                        let notification = listener.recv().await?;
                        let Some(sender) = relay.upgrade() else {
                            return Ok(());
                        };
                        match serde_json::from_str::<JobEvent>(notification.payload()) {
                            Ok(event) => {
                                let _ = sender.send(event);
                            }
                            Err(e) => tracing::debug!("ignoring malformed job event: {e}"),
                        }
                    }
                }
                .await;
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        if relay.upgrade().is_none() || pool.is_closed() {
                            return;
                        }
                        tracing::debug!("job event listener: {e:?}; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        EventHub { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.sender.subscribe()
    }
}
