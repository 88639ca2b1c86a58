//! Permissions and built-in roles (SPEC §6). A permission set is a bitmask so a request-time check
//! is one AND.

use serde::{Serialize, Serializer};

macro_rules! permissions {
    ($($variant:ident = $bit:expr => $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Permission { $($variant = 1 << $bit),* }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Permission::$variant),)* _ => None }
            }
        }
    };
}

permissions! {
    ModelsRead = 0 => "models:read",
    ChatWrite = 1 => "chat:write",
    EmbeddingsWrite = 2 => "embeddings:write",
    ImagesWrite = 3 => "images:write",
    OperationsRead = 4 => "operations:read",
    KeysWrite = 5 => "keys:write",
    KeysAdmin = 6 => "keys:admin",
    UsersRead = 7 => "users:read",
    UsersWrite = 8 => "users:write",
    RolesWrite = 9 => "roles:write",
    ProductsWrite = 10 => "products:write",
    SubscriptionsRead = 11 => "subscriptions:read",
    SubscriptionsWrite = 12 => "subscriptions:write",
    UsageRead = 13 => "usage:read",
    AuditRead = 14 => "audit:read",
    TenantAdmin = 15 => "tenant:admin",
    MetricsRead = 16 => "metrics:read",
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermSet(u32);

impl PermSet {
    pub const EMPTY: PermSet = PermSet(0);

    pub fn all() -> Self {
        Self(Permission::ALL.iter().fold(0, |acc, p| acc | *p as u32))
    }
    pub fn of(perms: &[Permission]) -> Self {
        Self(perms.iter().fold(0, |acc, p| acc | *p as u32))
    }
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p as u32 != 0
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
    pub fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::as_str).collect()
    }
    /// Parses permission names; the first unknown name is returned as the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = Self::EMPTY;
        for n in names {
            let p = Permission::parse(n).ok_or_else(|| n.to_string())?;
            set.0 |= p as u32;
        }
        Ok(set)
    }
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::fmt::Debug for PermSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Serialize for PermSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// The built-in roles. Custom roles live in the store, per tenant.
pub const BUILTIN_ROLES: &[&str] = &["owner", "admin", "developer", "viewer"];

pub fn builtin_role(name: &str) -> Option<PermSet> {
    use Permission::*;
    Some(match name {
        "owner" | "admin" => PermSet::all(),
        "developer" => PermSet::of(&[
            ModelsRead,
            ChatWrite,
            EmbeddingsWrite,
            ImagesWrite,
            OperationsRead,
            KeysWrite,
            UsageRead,
        ]),
        "viewer" => PermSet::of(&[ModelsRead, OperationsRead, UsageRead]),
        _ => return None,
    })
}

pub fn builtin_description(name: &str) -> &'static str {
    match name {
        "owner" => "Full control of the tenant",
        "admin" => "Everything but transferring or deleting the tenant",
        "developer" => "Calls models, manages own API keys, reads own usage",
        "viewer" => "Reads models, operations and usage",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_spec_list_is_complete() {
        let spec = "models:read chat:write embeddings:write images:write operations:read keys:write keys:admin users:read users:write roles:write products:write subscriptions:read subscriptions:write usage:read audit:read tenant:admin metrics:read";
        let set = PermSet::parse(spec.split(' ')).unwrap();
        assert_eq!(set, PermSet::all());
        assert_eq!(set.names().join(" "), spec);
        assert_eq!(PermSet::parse(["chat:write", "nope"]), Err("nope".into()));
    }

    #[test]
    fn builtin_roles_match_the_spec() {
        let dev = builtin_role("developer").unwrap();
        assert!(dev.contains(Permission::ChatWrite));
        assert!(!dev.contains(Permission::KeysAdmin));
        let viewer = builtin_role("viewer").unwrap();
        assert!(viewer.is_subset_of(dev));
        assert!(!viewer.contains(Permission::ChatWrite));
        assert_eq!(builtin_role("owner"), Some(PermSet::all()));
        assert_eq!(builtin_role("custom"), None);
    }
}
