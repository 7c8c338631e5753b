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

impl TypeAccess {
    fn none() -> Self {
        TypeAccess::Only(BTreeSet::new())
    }

    pub fn allows(&self, resource_type: &str) -> bool {
        match self {
            TypeAccess::All => true,
            TypeAccess::Only(set) => set.contains(resource_type),
        }
    }

    fn add(&mut self, target: &str) {
        match (target, &mut *self) {
            ("*", _) => *self = TypeAccess::All,
            (_, TypeAccess::All) => {}
            (t, TypeAccess::Only(set)) => {
                set.insert(t.to_string());
            }
        }
    }
}

/// What one scope's permission part grants (SMART v2 letters; v1 `read` is
/// `rs`, `write` is `cud`, `*` is all five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub create: bool,
    pub read: bool,
    pub update: bool,
    pub delete: bool,
    pub search: bool,
}

impl Perms {
    /// The permissions of a scope's part after the dot; `None` when it is
    /// not SMART syntax.
    pub fn parse(perms: &str) -> Option<Perms> {
        let letters = match perms {
            "read" => "rs",
            "write" => "cud",
            "*" => "cruds",
            p if is_v2_permission(p) => p,
            _ => return None,
        };
        Some(Perms {
            create: letters.contains('c'),
            read: letters.contains('r'),
            update: letters.contains('u'),
            delete: letters.contains('d'),
            search: letters.contains('s'),
        })
    }

    pub fn and(self, other: Perms) -> Perms {
        Perms {
            create: self.create && other.create,
            read: self.read && other.read,
            update: self.update && other.update,
            delete: self.delete && other.delete,
            // Searching without reading gives nothing here.
            search: self.search && other.search && self.read && other.read,
        }
    }

    /// These permissions less `other`'s.
    pub fn without(self, other: Perms) -> Perms {
        Perms {
            create: self.create && !other.create,
            read: self.read && !other.read,
            update: self.update && !other.update,
            delete: self.delete && !other.delete,
            search: self.search && !other.search,
        }
    }

    pub fn is_empty(self) -> bool {
        !(self.create || self.read || self.update || self.delete || self.search)
    }

    pub fn is_read(self) -> bool {
        self.read && self.search && !(self.create || self.update || self.delete)
    }

    pub fn is_write(self) -> bool {
        self.create && self.update && self.delete && !(self.read || self.search)
    }

    /// SMART v2 letters, in `cruds` order.
    pub fn letters(self) -> String {
        [
            (self.create, 'c'),
            (self.read, 'r'),
            (self.update, 'u'),
            (self.delete, 'd'),
            (self.search, 's'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }
}

/// The kinds of write the FHIR write API makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `POST Type`: SMART `c`.
    Create,
    /// `PUT Type/id` (which may also create): SMART `u`.
    Update,
    /// `DELETE Type/id`: SMART `d`.
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Types the caller may read.
    pub types: TypeAccess,
    /// Types the caller may create, update, delete.
    pub creates: TypeAccess,
    pub updates: TypeAccess,
    pub deletes: TypeAccess,
    /// `Some`: only these Groups may be exported (and read); system and
    /// Patient-level exports are refused, since they would reach past them.
    /// Such clients never write and never see the audit trail.
    pub groups: Option<BTreeSet<String>>,
    /// May export the audit trail (`$export-revisions`): a flag on the
    /// client's registration, carried in its tokens.
    pub audit: bool,
}

impl Access {
    /// Everything: open mode, or an administrator.
    pub fn unrestricted() -> Self {
        Access {
            types: TypeAccess::All,
            creates: TypeAccess::All,
            updates: TypeAccess::All,
            deletes: TypeAccess::All,
            groups: None,
            audit: true,
        }
    }

    /// The access a space-separated scope string grants. Only `system/`
    /// scopes without queries count.
    pub fn from_scopes(scopes: &str) -> Self {
        let mut a = Access {
            types: TypeAccess::none(),
            creates: TypeAccess::none(),
            updates: TypeAccess::none(),
            deletes: TypeAccess::none(),
            groups: None,
            audit: false,
        };
        for scope in scopes.split_whitespace() {
            let Some((target, perms)) = system_scope(scope) else {
                continue;
            };
            if perms.read {
                a.types.add(target);
            }
            if perms.create {
                a.creates.add(target);
            }
            if perms.update {
                a.updates.add(target);
            }
            if perms.delete {
                a.deletes.add(target);
            }
        }
        a
    }

    /// What this access grants on one type (`*` for every type).
    pub fn perms_on(&self, target: &str) -> Perms {
        let on = |t: &TypeAccess| match target {
            "*" => matches!(t, TypeAccess::All),
            _ => t.allows(target),
        };
        let read = on(&self.types);
        Perms {
            create: on(&self.creates),
            read,
            update: on(&self.updates),
            delete: on(&self.deletes),
            search: read,
        }
    }

    pub fn with_groups(mut self, groups: Option<BTreeSet<String>>) -> Self {
        self.groups = groups;
        self
    }

    pub fn with_audit(mut self, audit: bool) -> Self {
        self.audit = audit;
        self
    }

    pub fn can_read(&self, resource_type: &str) -> bool {
        self.types.allows(resource_type)
    }

    /// Writing is for clients with a write scope on the type, and never for
    /// clients limited to Groups (a write reaches past any Group).
    pub fn can_write(&self, kind: WriteKind, resource_type: &str) -> bool {
        self.groups.is_none()
            && match kind {
                WriteKind::Create => self.creates.allows(resource_type),
                WriteKind::Update => self.updates.allows(resource_type),
                WriteKind::Delete => self.deletes.allows(resource_type),
            }
    }

    /// Whether the caller may write anything at all.
    pub fn can_write_any(&self) -> bool {
        let some = |t: &TypeAccess| !matches!(t, TypeAccess::Only(s) if s.is_empty());
        self.groups.is_none() && (some(&self.creates) || some(&self.updates) || some(&self.deletes))
    }

    /// The audit trail reveals every record's history, so Group-limited
    /// clients never see it.
    pub fn can_audit(&self) -> bool {
        self.audit && self.groups.is_none()
    }

    pub fn can_use_group(&self, group_id: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(group_id))
    }
}

/// A `system/` scope's target (`*` or a type) and permissions; `None` for
/// anything else (other contexts, queries, unknown types, bad syntax).
pub fn system_scope(scope: &str) -> Option<(&str, Perms)> {
    let rest = scope.strip_prefix("system/")?;
    if rest.contains('?') {
        return None;
    }
    let (target, perms) = rest.split_once('.')?;
    if target != "*" && !is_resource_type(target) {
        return None;
    }
    Some((target, Perms::parse(perms)?))
}

/// SMART v2 permissions: a non-empty subsequence of `cruds`, in that order.
pub fn is_v2_permission(p: &str) -> bool {
    !p.is_empty() && {
        let mut order = "cruds".chars();
        p.chars().all(|c| order.by_ref().any(|o| o == c))
    }
}

/// Who is calling: the verified subject that owns the jobs it starts, and
/// what it may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub access: Access,
}

impl Caller {
    /// The single owner of every job in open mode (no tokens).
    pub fn anonymous() -> Self {
        Caller {
            subject: "anonymous".into(),
            access: Access::unrestricted(),
        }
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
    fn write_scopes_grant_writes_per_operation() {
        let a = Access::from_scopes("system/Patient.write system/Observation.cu");
        assert!(a.can_write(WriteKind::Delete, "Patient"));
        assert!(a.can_write(WriteKind::Create, "Observation"));
        assert!(a.can_write(WriteKind::Update, "Observation"));
        assert!(!a.can_write(WriteKind::Delete, "Observation"));
        assert!(!a.can_read("Patient") && !a.can_write(WriteKind::Create, "Encounter"));
        let all = Access::from_scopes("system/*.cud");
        assert!(all.can_write(WriteKind::Update, "Encounter") && all.can_write_any());
        assert!(!Access::from_scopes("system/*.read").can_write_any());
        // Group-limited clients never write or audit.
        let limited = all
            .with_audit(true)
            .with_groups(Some(["g1".to_string()].into()));
        assert!(!limited.can_write(WriteKind::Update, "Encounter") && !limited.can_audit());
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
