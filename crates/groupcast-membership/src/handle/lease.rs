//! The lease task: renews the edge's lease every `renew_every`; a lost
//! lease (the service removed the edge) schedules a new registration and a
//! resync, and renewals that keep failing mark the service unavailable.

use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use crate::transport::{Reply, Request};

pub(super) async fn renew_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(s.cfg.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if s.queue.lock().register {
            continue;
        }
        let started = Instant::now();
        match s
            .conn
            .call(&Request::Renew(s.edge.clone()), s.cfg.request_timeout)
            .await
        {
            Ok(Reply::Renewed(true)) => s.set_available(true),
            Ok(Reply::Renewed(false)) => {
                tracing::warn!("membership: lease lost; registering again");
                s.set_available(true);
                let mut q = s.queue.lock();
                q.register = true;
                q.resync = true;
                s.wake.notify_one();
            }
            Ok(other) => tracing::debug!(reply = ?other, "lease renewal not accepted"),
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                if started.elapsed() >= s.cfg.request_timeout {
                    s.set_available(false);
                }
            }
        }
    }
}
