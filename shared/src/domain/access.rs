//! What a caller may read: SMART Backend Services system scopes (v1 and v2)
//! and an optional Group allow-list (the per-collection access of biobank
//! systems).
//!
//! Only `system/` scopes grant anything here: bulk export is a
//! backend-services flow. A scope with a query (`system/Observation.rs?...`)
//! would need filtering this server does not do, so it grants nothing.

use std::collections::BTreeSet;

use super::fhir_types::is_resource_type;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeAccess {
    /// `system/*.read`, `system/*.rs`, ...
    All,
    Only(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub types: TypeAccess,
    /// `Some`: only these Groups may be exported (and read); system and
    /// Patient-level exports are refused, since they would reach past them.
    pub groups: Option<BTreeSet<String>>,
    /// May use the FHIR write API (loaders, administrators). Tokens never
    /// carry write scopes, so token holders never can.
    pub write: bool,
}

impl Access {
    /// Everything: open mode, or an administrator.
    pub fn unrestricted() -> Self {
        Access {
            types: TypeAccess::All,
            groups: None,
            write: true,
        }
    }

    /// The read access a space-separated scope string grants.
    pub fn from_scopes(scopes: &str) -> Self {
        let mut types = BTreeSet::new();
        let mut all = false;
        for scope in scopes.split_whitespace() {
            match readable_type(scope) {
                Some(ScopeTarget::All) => all = true,
                Some(ScopeTarget::Type(t)) => {
                    types.insert(t.to_string());
                }
                None => {}
            }
        }
        Access {
            types: if all {
                TypeAccess::All
            } else {
                TypeAccess::Only(types)
            },
            groups: None,
            write: false,
        }
    }

    pub fn with_groups(mut self, groups: Option<BTreeSet<String>>) -> Self {
        self.groups = groups;
        self
    }

    pub fn can_read(&self, resource_type: &str) -> bool {
        match &self.types {
            TypeAccess::All => true,
            TypeAccess::Only(set) => set.contains(resource_type),
        }
    }

    pub fn can_use_group(&self, group_id: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(group_id))
    }
}

enum ScopeTarget<'a> {
    All,
    Type(&'a str),
}

/// The type a single scope lets its holder read, if any.
fn readable_type(scope: &str) -> Option<ScopeTarget<'_>> {
    let rest = scope.strip_prefix("system/")?;
    if rest.contains('?') {
        return None;
    }
    let (target, perms) = rest.split_once('.')?;
    let reads = match perms {
        "read" | "*" => true,
        "write" => false,
        v2 => is_v2_permission(v2) && v2.contains('r'),
    };
    if !reads {
        return None;
    }
    match target {
        "*" => Some(ScopeTarget::All),
        t if is_resource_type(t) => Some(ScopeTarget::Type(t)),
        _ => None,
    }
}

/// SMART v2 permissions: a non-empty subsequence of `cruds`, in that order.
pub fn is_v2_permission(p: &str) -> bool {
    !p.is_empty() && {
        let mut order = "cruds".chars();
        p.chars().all(|c| order.by_ref().any(|o| o == c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_system_scopes_grant_reads() {
        let a =
            Access::from_scopes("system/Patient.read system/Observation.rs system/Encounter.cruds");
        assert!(a.can_read("Patient") && a.can_read("Observation") && a.can_read("Encounter"));
        assert!(!a.can_read("Condition"));
        assert_eq!(Access::from_scopes("system/*.read").types, TypeAccess::All);
        assert_eq!(Access::from_scopes("system/*.rs").types, TypeAccess::All);
        assert_eq!(Access::from_scopes("system/*.*").types, TypeAccess::All);
    }

    #[test]
    fn other_scopes_grant_nothing() {
        for s in [
            "patient/*.read",
            "user/Observation.rs",
            "system/Observation.write",
            "system/Observation.cud",
            "system/Observation.sr",
            "system/Observation.rs?category=laboratory",
            "system/Nope.read",
            "system/Observation",
            "openid fhirUser",
            "",
        ] {
            assert_eq!(
                Access::from_scopes(s).types,
                TypeAccess::Only(BTreeSet::new()),
                "{s}"
            );
        }
    }

    #[test]
    fn group_allow_list() {
        let a = Access::unrestricted();
        assert!(a.can_use_group("any"));
        let a = a.with_groups(Some(["g1".to_string()].into()));
        assert!(a.can_use_group("g1") && !a.can_use_group("g2"));
    }
}
