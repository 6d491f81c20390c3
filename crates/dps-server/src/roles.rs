//! The role poll of a node on a shared store: every `role_poll` it asks its database whether it
//! is primary (`pg_is_in_recovery()`), and records the answer in `Services`, which serves
//! devices only while it is primary. On promotion (standby or unreachable → primary) the node
//! first drops its pooled connections and brings the schema up to date, and only then turns
//! ready. Instances, enrollments and each instance's `minTlsVersion` are read from the database
//! per request, so nothing else needs reloading.
//!
//! Fencing: with `[store] peer_url`, a node whose own database is primary also asks the other
//! region's database; if that one is primary on a higher timeline, this database is an old
//! primary restarted after a failover (split brain), and the node serves nothing (`fenced`).

use std::time::{Duration, Instant};

use dps_core::service::{Role, Services};
use dps_store_postgres::PgStore;
use tokio_util::sync::CancellationToken;

/// The role to act on: the database's own, or `Fenced` when the peer is primary on a higher
/// timeline.
pub(crate) async fn observe(db: &PgStore, peer: Option<&PgStore>) -> Role {
    let own = db.role().await;
    let Some(peer) = peer else { return own };
    if own != Role::Primary || peer.role().await != Role::Primary {
        return own;
    }
    match (db.timeline().await, peer.timeline().await) {
        (Ok(mine), Ok(theirs)) if theirs > mine => {
            tracing::debug!(
                timeline = mine,
                peer_timeline = theirs,
                "the peer database is primary on a higher timeline"
            );
            Role::Fenced
        }
        _ => own,
    }
}

/// Polls until `shutdown`.
pub(crate) async fn poll(
    db: PgStore,
    peer: Option<PgStore>,
    services: Services,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let seen = tokio::select! {
            () = shutdown.cancelled() => return,
            r = observe(&db, peer.as_ref()) => r,
        };
        let was = services.role();
        if seen == was {
            continue;
        }
        if seen == Role::Primary {
            if let Err(e) = db.after_promotion().await {
                tracing::warn!(error = %dps_core::error::DisplayChain(&e), "database became primary, but preparing it failed; retrying");
                continue;
            }
        }
        services.set_role(seen);
        let after_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        since = Instant::now();
        match seen {
            Role::Primary => tracing::warn!(from = was.as_str(), after_ms, "database is primary: serving devices"),
            Role::Fenced => tracing::error!(
                from = was.as_str(),
                "split brain: the peer database is primary on a higher timeline; this node serves nothing \
                 (rewind this database into a standby of the peer: docs/failover.md, \"Failback\")"
            ),
            other => {
                tracing::warn!(
                    role = other.as_str(),
                    from = was.as_str(),
                    after_ms,
                    "database is not primary: refusing devices (503)"
                )
            }
        }
    }
}
