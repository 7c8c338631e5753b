//! Reading and checking a ViewDefinition.

use std::collections::HashMap;

use serde_json::Value;

use super::View;
use crate::fhirpath::{Item, Path};
use crate::resource_types::is_resource_type;

/// Why a view is refused or a resource cannot be turned into rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewError(pub String);

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ViewError {}

/// A column of the view's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// The FHIR type the view gives it (`string`, `integer`, `dateTime`...).
    pub type_name: Option<String>,
    pub collection: bool,
}

#[derive(Debug)]
pub(super) struct Column {
    pub name: String,
    pub path: Path,
    pub collection: bool,
}

#[derive(Debug)]
pub(super) enum Focus {
    Same,
    ForEach { path: Path, or_null: bool },
    Repeat(Vec<Path>),
}

#[derive(Debug)]
pub(super) struct Select {
    pub focus: Focus,
    pub columns: Vec<Column>,
    pub selects: Vec<Select>,
    pub union_all: Vec<Select>,
    /// How many columns its rows have.
    pub width: usize,
}

impl Select {
    /// Collects the paths evaluated on the resource itself into `root`
    /// (when `at_root`), and every path into `all`.
    pub(super) fn paths<'a>(
        &'a self,
        at_root: bool,
        root: &mut Vec<&'a Path>,
        all: &mut Vec<&'a Path>,
    ) {
        let inner_at_root = match &self.focus {
            Focus::Same => at_root,
            Focus::ForEach { path, .. } => {
                if at_root {
                    root.push(path);
                }
                all.push(path);
                false
            }
            Focus::Repeat(paths) => {
                if at_root {
                    root.extend(paths.iter());
                }
                all.extend(paths.iter());
                false
            }
        };
        for c in &self.columns {
            if inner_at_root {
                root.push(&c.path);
            }
            all.push(&c.path);
        }
        for s in self.selects.iter().chain(&self.union_all) {
            s.paths(inner_at_root, root, all);
        }
    }
}

fn err(m: impl Into<String>) -> ViewError {
    ViewError(m.into())
}

/// The variables every path may use besides the view's constants.
const BUILT_IN_VARIABLES: [&str; 7] = [
    "resource",
    "context",
    "rootResource",
    "rowIndex",
    "ucum",
    "sct",
    "loinc",
];

struct Reader {
    constants: Vec<String>,
}

impl Reader {
    fn path(&self, what: &str, v: Option<&Value>) -> Result<Path, ViewError> {
        let text = v
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("{what} must be a FHIRPath string")))?;
        let path = Path::parse(text).map_err(|e| err(format!("{what} '{text}': {e}")))?;
        if let Some(f) = path.unsupported_function() {
            return Err(err(format!(
                "{what} '{text}': the function {f}() is not supported"
            )));
        }
        for var in path.variables() {
            if !self.constants.contains(&var) && !BUILT_IN_VARIABLES.contains(&var.as_str()) {
                return Err(err(format!(
                    "{what} '{text}' uses %{var}, which is no constant of the view"
                )));
            }
        }
        Ok(path)
    }

    fn select(&self, v: &Value, defs: &mut Vec<ColumnDef>) -> Result<Select, ViewError> {
        let o = v
            .as_object()
            .ok_or_else(|| err("a select must be an object"))?;
        let focus = self.focus(o)?;
        let before = defs.len();
        let mut columns = Vec::new();
        for c in list(o, "column")? {
            let (column, def) = self.column(c)?;
            columns.push(column);
            defs.push(def);
        }
        let mut selects = Vec::new();
        for s in list(o, "select")? {
            selects.push(self.select(s, defs)?);
        }
        let union_all = self.union_all(o, defs)?;
        Ok(Select {
            focus,
            columns,
            selects,
            union_all,
            width: defs.len() - before,
        })
    }

    /// What a select's rows iterate over: its `forEach`, `forEachOrNull` or
    /// `repeat` (at most one of them), or the focus it is given.
    fn focus(&self, o: &serde_json::Map<String, Value>) -> Result<Focus, ViewError> {
        Ok(
            match (o.get("forEach"), o.get("forEachOrNull"), o.get("repeat")) {
                (None, None, None) => Focus::Same,
                (Some(p), None, None) => Focus::ForEach {
                    path: self.path("forEach", Some(p))?,
                    or_null: false,
                },
                (None, Some(p), None) => Focus::ForEach {
                    path: self.path("forEachOrNull", Some(p))?,
                    or_null: true,
                },
                (None, None, Some(Value::Array(paths))) if !paths.is_empty() => Focus::Repeat(
                    paths
                        .iter()
                        .map(|p| self.path("repeat", Some(p)))
                        .collect::<Result<_, _>>()?,
                ),
                (None, None, Some(_)) => {
                    return Err(err("repeat must be a non-empty list of FHIRPath strings"))
                }
                _ => {
                    return Err(err(
                        "a select has at most one of forEach, forEachOrNull and repeat",
                    ))
                }
            },
        )
    }

    /// A column: what evaluates it, and what the view's table says of it.
    fn column(&self, c: &Value) -> Result<(Column, ColumnDef), ViewError> {
        let name = column_name(c)?;
        let collection = match c.get("collection") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(err(format!(
                    "column '{name}': collection must be true or false"
                )))
            }
        };
        let type_name = match c.get("type") {
            None => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(err(format!("column '{name}': type must be a string"))),
        };
        let column = Column {
            name: name.to_string(),
            path: self.path(&format!("column '{name}' path"), c.get("path"))?,
            collection,
        };
        let def = ColumnDef {
            name: name.to_string(),
            type_name,
            collection,
        };
        Ok((column, def))
    }

    /// The branches of a select's `unionAll`; the first branch's columns
    /// join `defs`, and every other branch must have the same ones.
    fn union_all(
        &self,
        o: &serde_json::Map<String, Value>,
        defs: &mut Vec<ColumnDef>,
    ) -> Result<Vec<Select>, ViewError> {
        let mut union_all = Vec::new();
        let mut union_columns: Option<Vec<String>> = None;
        for branch in list(o, "unionAll")? {
            let mut branch_defs = Vec::new();
            union_all.push(self.select(branch, &mut branch_defs)?);
            let names: Vec<String> = branch_defs.iter().map(|d| d.name.clone()).collect();
            match &union_columns {
                None => {
                    defs.extend(branch_defs);
                    union_columns = Some(names);
                }
                Some(first) if *first == names => {}
                Some(first) => {
                    return Err(err(format!(
                        "the branches of a unionAll must have the same columns in the same order: {first:?} and {names:?}"
                    )))
                }
            }
        }
        Ok(union_all)
    }
}

/// A column's name: a letter followed by letters, digits and `_` (SQL on
/// FHIR asks for names a database can use as they are).
fn column_name(c: &Value) -> Result<&str, ViewError> {
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| err("a column needs a name"))?;
    let valid = name.starts_with(|ch: char| ch.is_ascii_alphabetic())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !valid {
        return Err(err(format!(
            "column name '{name}' is not a letter followed by letters, digits and _"
        )));
    }
    Ok(name)
}

fn array(v: &Value) -> Result<&Vec<Value>, ViewError> {
    v.as_array()
        .ok_or_else(|| err("select, column, unionAll, where and constant must be lists"))
}

/// The list under `key` (none if absent).
fn list<'v>(o: &'v serde_json::Map<String, Value>, key: &str) -> Result<&'v [Value], ViewError> {
    match o.get(key) {
        None => Ok(&[]),
        Some(v) => array(v).map(Vec::as_slice),
    }
}

/// A constant's value and FHIR type, from its `value[x]`.
fn constant(c: &Value) -> Result<(String, Item<'static>), ViewError> {
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| err("a constant needs a name"))?;
    let (key, value) = c
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        .ok_or_else(|| err(format!("constant '{name}' has no value[x]")))?;
    let type_name = &key["value".len()..];
    if type_name.is_empty() || value.is_object() || value.is_array() || value.is_null() {
        return Err(err(format!(
            "constant '{name}': {key} is not a primitive value"
        )));
    }
    Ok((name.to_string(), Item::typed(value.clone(), type_name)))
}

pub(super) fn parse(view: &Value) -> Result<View, ViewError> {
    let o = view
        .as_object()
        .ok_or_else(|| err("a ViewDefinition must be a JSON object"))?;
    if let Some(t) = o.get("resourceType").and_then(Value::as_str) {
        if t != "ViewDefinition" {
            return Err(err(format!("expected a ViewDefinition, not a {t}")));
        }
    }
    let resource_type = o
        .get("resource")
        .and_then(Value::as_str)
        .ok_or_else(|| err("a ViewDefinition needs 'resource', the type its rows come from"))?;
    if !is_resource_type(resource_type) {
        return Err(err(format!(
            "'{resource_type}' is not a FHIR R4 resource type"
        )));
    }
    let mut constants = HashMap::new();
    for c in list(o, "constant")? {
        let (name, item) = constant(c)?;
        if constants.insert(name.clone(), vec![item]).is_some() {
            return Err(err(format!("constant '{name}' is defined twice")));
        }
    }
    let reader = Reader {
        constants: constants.keys().cloned().collect(),
    };
    let selects = o
        .get("select")
        .map(array)
        .transpose()?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("a ViewDefinition needs at least one select"))?;
    let mut columns = Vec::new();
    let mut select = Vec::new();
    for s in selects {
        select.push(reader.select(s, &mut columns)?);
    }
    let mut seen = std::collections::HashSet::new();
    for c in &columns {
        if !seen.insert(c.name.as_str()) {
            return Err(err(format!("column name '{}' is used twice", c.name)));
        }
    }
    let mut where_paths = Vec::new();
    for w in list(o, "where")? {
        where_paths.push(reader.path("where path", w.get("path"))?);
    }
    let mut view = View {
        resource_type: resource_type.to_string(),
        name: o.get("name").and_then(Value::as_str).map(str::to_string),
        constants,
        select,
        where_paths,
        columns,
        roots: None,
    };
    view.roots = view.root_elements().map(super::pruned::Roots::new);
    Ok(view)
}
