//! The operations layer. Each operation is one function taking a typed actor and typed input
//! and returning a domain result; it runs inside a [`Unit`], the one place where a change, its
//! audit events and its invalidations are committed together — and where, after the commit, the
//! invalidations are applied on this instance. HTTP handlers, the CLI and bootstrap call these
//! functions; none of them writes that sequence itself.
//!
//! What a caller may do (the ceiling, own vs any key, the owner rule) is checked by the front
//! end in the same unit, before the operation: a refused request changes nothing.

use tollgate_core::audit::Actor;

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::store::audit::{AuditEvent, RequestMeta, append};
use crate::store::invalidations::{self, Kind};
use crate::store::{Conn, Store, StoreError, Tx};

pub mod identity;
pub mod keys;
pub mod subscriptions;
pub mod tenants;
pub mod users;

/// One transaction of one operation: the change, its audit events, the invalidations it
/// publishes. Dropped without [`commit`](Unit::commit), nothing of it happened.
pub struct Unit<'m> {
    tx: Tx,
    meta: &'m RequestMeta,
    published: Vec<(Kind, String)>,
}

impl<'m> Unit<'m> {
    pub async fn begin(store: &Store, meta: &'m RequestMeta) -> ApiResult<Self> {
        Ok(Self {
            tx: store.begin().await?,
            meta,
            published: Vec::new(),
        })
    }

    /// The unit's transaction, for the reads and checks before the change and for the change
    /// itself (store functions).
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.tx
    }

    /// Where the request came from.
    pub fn meta(&self) -> &'m RequestMeta {
        self.meta
    }

    /// Appends an audit event to the unit (hash-chained by the store).
    pub async fn audit(&mut self, event: AuditEvent) -> ApiResult<()> {
        append(&mut self.tx, event).await?;
        Ok(())
    }

    /// The audit event of `action` by `actor` in `tenant_id`, to fill in and [`audit`](Self::audit).
    pub fn event(
        &self,
        tenant_id: impl Into<String>,
        actor: Actor,
        action: tollgate_core::audit::Action,
    ) -> AuditEvent {
        AuditEvent::new(tenant_id, actor, action, self.meta)
    }

    /// Publishes an invalidation with the change (other instances apply it when they poll) and
    /// remembers it, to apply it here after the commit.
    pub async fn invalidate(&mut self, kind: Kind, target: &str) -> ApiResult<()> {
        invalidations::publish(&mut self.tx, kind, target, self.meta).await?;
        self.published.push((kind, target.to_string()));
        Ok(())
    }

    /// Commits, then applies the unit's invalidations on this instance before the answer leaves
    /// (its poller skips them: their origin is this instance).
    pub async fn commit(self, auth: &Auth) -> ApiResult<()> {
        self.tx.commit().await.map_err(StoreError::from)?;
        for (kind, target) in &self.published {
            auth.invalidate(*kind, target);
        }
        Ok(())
    }

    /// Commits from a process that serves no requests (the CLI, first start): every serving
    /// instance applies the invalidations when it polls.
    pub async fn commit_offline(self) -> ApiResult<()> {
        self.tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}
