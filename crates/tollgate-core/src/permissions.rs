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
    /// The permissions of `self` that `other` lacks.
    pub fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Holds every permission there is.
    pub fn is_all(self) -> bool {
        self == Self::all()
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

/// What a credential can do: its effective permissions (its subject's current roles narrowed by
/// its scopes), and the two powers that are not permission bits. `owner` and `admin` both hold
/// every permission, so acting as a tenant owner is a power of its own: a credential has it when
/// its user holds the `owner` role now *and* the credential is not narrowed at all. The platform
/// power (`/v1/tenants`) needs the user's platform-owner flag *and* the effective `tenant:admin`.
///
/// The invariant every credential-minting route keeps: the credential created, widened or handed
/// out (a new key, a rotated secret, a service account, an app-JWT signing credential) is
/// [`within`](Authority::within) the authority of the credential asking for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authority {
    pub permissions: PermSet,
    /// May act as a tenant owner: grant or remove the `owner` role, remove an owner.
    pub owner: bool,
    /// May manage tenants.
    pub platform: bool,
}

/// What a credential would hold beyond the authority asking for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excess {
    pub permissions: PermSet,
    pub owner: bool,
    pub platform: bool,
}

impl Excess {
    /// "chat:write, users:write", "the tenant owner's powers", ... for an error message.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.permissions.is_empty() {
            parts.push(self.permissions.names().join(", "));
        }
        if self.owner {
            parts.push("the tenant owner's powers".into());
        }
        if self.platform {
            parts.push("the platform owner's powers".into());
        }
        parts.join("; ")
    }
}

impl Authority {
    /// Permissions only: service accounts, subscription credentials, external identities.
    pub fn permissions_only(permissions: PermSet) -> Self {
        Self {
            permissions,
            owner: false,
            platform: false,
        }
    }

    /// A credential of a member (a key, a session) whose effective permissions are
    /// `permissions`; `holds_owner_role` and `platform_admin` describe the user now.
    pub fn of_member(permissions: PermSet, holds_owner_role: bool, platform_admin: bool) -> Self {
        Self {
            permissions,
            owner: holds_owner_role && permissions.is_all(),
            platform: platform_admin && permissions.contains(Permission::TenantAdmin),
        }
    }

    /// What `self` holds that `ceiling` does not; `None` when `self` is within `ceiling`.
    pub fn excess_over(self, ceiling: Authority) -> Option<Excess> {
        let e = Excess {
            permissions: self.permissions.minus(ceiling.permissions),
            owner: self.owner && !ceiling.owner,
            platform: self.platform && !ceiling.platform,
        };
        (!e.permissions.is_empty() || e.owner || e.platform).then_some(e)
    }

    pub fn within(self, ceiling: Authority) -> bool {
        self.excess_over(ceiling).is_none()
    }
}

/// The built-in roles. Custom roles live in the store, per tenant.
pub const BUILTIN_ROLES: &[&str] = &["owner", "admin", "developer", "viewer", "consumer"];

/// The role whose holders own the tenant. Only an owner grants or removes it.
pub const OWNER_ROLE: &str = "owner";

/// The role of developer-portal sign-ups: a member with only this role reads the published
/// catalogue only.
pub const CONSUMER_ROLE: &str = "consumer";

/// Whether `name` would read as a built-in role (any ASCII case): custom roles may not take
/// such a name, so no custom role can pass for `owner`.
pub fn is_builtin_name(name: &str) -> bool {
    BUILTIN_ROLES.iter().any(|b| b.eq_ignore_ascii_case(name))
}

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
        // Developer-portal sign-ups: what their subscriptions' credentials are used for. Their
        // own subscriptions, credentials and usage are managed through the portal, which checks
        // ownership itself (another consumer's object is 404 there).
        "consumer" => PermSet::of(&[
            ModelsRead,
            ChatWrite,
            EmbeddingsWrite,
            ImagesWrite,
            OperationsRead,
        ]),
        _ => return None,
    })
}

pub fn builtin_description(name: &str) -> &'static str {
    match name {
        "owner" => "Full control of the tenant",
        "admin" => "Everything but transferring or deleting the tenant",
        "developer" => "Calls models, manages own API keys, reads own usage",
        "viewer" => "Reads models, operations and usage",
        "consumer" => "Developer-portal sign-up: manages their own subscriptions and credentials",
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
        assert!(is_builtin_name("Owner") && is_builtin_name("ADMIN"));
        assert!(!is_builtin_name("owners"));
    }

    #[test]
    fn authority_ceilings() {
        use Permission::*;
        let all = PermSet::all();
        let owner = Authority::of_member(all, true, true);
        let admin = Authority::of_member(all, false, false);
        // An owner's credential narrowed by even one scope is no longer the owner.
        let narrowed = all.minus(PermSet::of(&[MetricsRead]));
        assert!(!Authority::of_member(narrowed, true, false).owner);
        assert!(owner.owner && owner.platform && !admin.owner);
        assert!(admin.within(owner));
        let e = owner.excess_over(admin).unwrap();
        assert!(e.owner && e.platform && e.permissions.is_empty());
        assert_eq!(
            e.describe(),
            "the tenant owner's powers; the platform owner's powers"
        );
        // The platform power needs the effective tenant:admin.
        let read_only = Authority::of_member(PermSet::of(&[ModelsRead]), true, true);
        assert!(!read_only.platform && !read_only.owner);
        let keys_only = Authority::permissions_only(PermSet::of(&[KeysWrite]));
        let dev = Authority::of_member(builtin_role("developer").unwrap(), false, false);
        let e = dev.excess_over(keys_only).unwrap();
        assert!(!e.permissions.contains(KeysWrite) && e.permissions.contains(ChatWrite));
        assert!(keys_only.within(dev));
        assert_eq!(all.minus(all), PermSet::EMPTY);
        assert!(PermSet::EMPTY.is_empty() && all.is_all() && !narrowed.is_all());
    }
}
