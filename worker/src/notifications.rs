//! Wake-ups from Postgres: a task listens on a channel (migration 0010) and wakes a loop for
//! every notification, so the loop sleeps instead of polling. Should the listening connection
//! break, notifications sent meanwhile are lost, so every new listen wakes the loop once;
//! each loop still runs now and then on its own, in case.

use std::{future::Future, sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Pause before listening again after the listening connection failed.
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

/// A wake-up fired for every notification on the listeners `listen` makes, until `stop`. A
/// wake that comes while its loop is busy is kept (one at most) for the loop's next wait.
pub fn woken_by<L, F>(listen: L, stop: &CancellationToken) -> Arc<Notify>
where
    L: Fn() -> F + Send + 'static,
    F: Future<Output = sqlx::Result<PgListener>> + Send + 'static,
{
    let wake = Arc::new(Notify::new());
    tokio::spawn(wake_on(listen, wake.clone(), stop.clone()));
    wake
}

async fn wake_on<L, F>(listen: L, wake: Arc<Notify>, stop: CancellationToken)
where
    L: Fn() -> F,
    F: Future<Output = sqlx::Result<PgListener>>,
{
    loop {
        let listening = tokio::select! {
            _ = stop.cancelled() => return,
            listening = listen() => listening,
        };
        match listening {
            Ok(mut listener) => {
                // Whatever changed before the listening began.
                wake.notify_one();
                loop {
                    let received = tokio::select! {
                        _ = stop.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        // `None`: the connection was lost and made again, and what was sent
                        // meanwhile is gone, so the loop looks anyway.
                        Ok(_) => wake.notify_one(),
                        Err(err) => {
                            tracing::warn!(%err, "lost the Postgres notifications; listening again");
                            break;
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "could not listen for Postgres notifications"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELISTEN_PAUSE) => {}
        }
    }
}
