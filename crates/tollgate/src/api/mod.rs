//! Management API handlers (SPEC §4.2). Each mutation runs in one store transaction together with
//! its audit event and, when it takes access away, its invalidation record.

pub mod audit;
pub mod keys;
pub mod tenants;
pub mod users;
