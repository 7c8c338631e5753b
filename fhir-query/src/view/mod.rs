//! SQL on FHIR v2 ViewDefinitions: a resource to the rows of a table.
//!
//! A view is checked when it is read ([`View::parse`]): its FHIRPath, its
//! constants, its column names (unique; the branches of a `unionAll` alike).
//! [`View::rows`] then turns one resource into rows, following the spec's
//! algorithm: `where` filters the resource; a `select`'s columns make one
//! row on its focus, combined (cross product) with its nested `select`s and
//! its `unionAll`; `forEach`, `forEachOrNull` and `repeat` change the focus
//! and yield the rows of each. Domain-pure: no I/O.

mod definition;
pub mod output;
pub mod parquet;
mod pruned;

use std::collections::HashMap;

use serde_json::Value;

use crate::fhirpath::{field, EvalError, Item, Path};
use definition::{Column, Focus, Select};
pub use definition::{ColumnDef, ViewError};

/// A checked ViewDefinition.
#[derive(Debug)]
pub struct View {
    pub resource_type: String,
    pub name: Option<String>,
    constants: HashMap<String, Vec<Item<'static>>>,
    select: Vec<Select>,
    where_paths: Vec<Path>,
    columns: Vec<ColumnDef>,
    /// `root_elements`, worked out once.
    roots: Option<pruned::Roots>,
}

/// One row: a value per column, in the view's column order.
pub type Row = Vec<Value>;

impl View {
    /// Reads and checks a ViewDefinition resource.
    pub fn parse(view: &Value) -> Result<View, ViewError> {
        definition::parse(view)
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[ColumnDef] {
        &self.columns
    }

    /// The top-level elements of a resource the view reads (besides
    /// `resourceType`), so a caller may parse only those; `None` when it may
    /// read anything (`%resource`, `$this` or a function at the root).
    pub fn root_elements(&self) -> Option<std::collections::BTreeSet<String>> {
        let mut out = Vec::new();
        let mut paths: Vec<&Path> = self.where_paths.iter().collect();
        let mut all = Vec::new();
        for s in &self.select {
            s.paths(true, &mut paths, &mut all);
        }
        // %resource and friends reach the whole resource from anywhere.
        let whole = ["resource", "rootResource", "context"];
        if all
            .iter()
            .chain(paths.iter())
            .any(|p| p.variables().iter().any(|v| whole.contains(&v.as_str())))
        {
            return None;
        }
        for p in paths {
            out.extend(p.root_elements()?);
        }
        Some(out.into_iter().collect())
    }

    /// Parses a stored resource for this view: only the top-level elements
    /// the view reads (`root_elements`, with their choice-type and `_`
    /// siblings) when it can tell, which skips most of a large resource.
    pub fn read_resource(&self, body: &str) -> Result<Value, serde_json::Error> {
        match &self.roots {
            Some(roots) => roots.read(body),
            None => serde_json::from_str(body),
        }
    }

    /// The rows of one resource (none if it is of another type or fails
    /// the view's `where`).
    pub fn rows(&self, resource: &Value) -> Result<Vec<Row>, ViewError> {
        if field(resource, "resourceType").and_then(Value::as_str) != Some(&self.resource_type) {
            return Ok(Vec::new());
        }
        let run = Run {
            resource,
            constants: &self.constants,
        };
        for w in &self.where_paths {
            match run.eval(w, &Item::of(resource), 0)?.as_slice() {
                [] => return Ok(Vec::new()),
                [one] => match one.value.as_bool() {
                    Some(true) => {}
                    Some(false) => return Ok(Vec::new()),
                    None => return Err(ViewError("a where path must give a boolean".into())),
                },
                _ => return Err(ViewError("a where path must give a single boolean".into())),
            }
        }
        let root = Item::of(resource);
        let mut rows: Vec<Row> = vec![Vec::new()];
        for s in &self.select {
            rows = product(rows, run.select_rows(s, &root, 0)?);
        }
        Ok(rows)
    }
}

struct Run<'a> {
    resource: &'a Value,
    constants: &'a HashMap<String, Vec<Item<'static>>>,
}

/// Every left row followed by every right row: the rows of a select with
/// those of its nested selects. One side is usually a single row, which
/// needs no copy of the other.
fn product(mut left: Vec<Row>, mut right: Vec<Row>) -> Vec<Row> {
    if left.len() == 1 {
        let l = left.pop().unwrap_or_default();
        if !l.is_empty() {
            for r in &mut right {
                r.splice(0..0, l.iter().cloned());
            }
        }
        return right;
    }
    if right.len() == 1 {
        let r = right.pop().unwrap_or_default();
        for l in &mut left {
            l.extend(r.iter().cloned());
        }
        return left;
    }
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in &right {
            let mut row = Vec::with_capacity(l.len() + r.len());
            row.extend(l.iter().cloned());
            row.extend(r.iter().cloned());
            out.push(row);
        }
    }
    out
}

impl<'a> Run<'a> {
    fn eval(&self, path: &Path, focus: &Item<'a>, index: i64) -> Result<Vec<Item<'a>>, ViewError> {
        self.eval_on(path, std::slice::from_ref(focus), index)
    }

    fn eval_on(
        &self,
        path: &Path,
        focus: &[Item<'a>],
        index: i64,
    ) -> Result<Vec<Item<'a>>, ViewError> {
        path.evaluate_in(focus, self.resource, self.constants, index)
            .map_err(|EvalError(m)| ViewError(m))
    }

    /// A select's rows on `focus` (its own columns, then its nested
    /// selects', then its unionAll's).
    fn select_rows(&self, s: &Select, focus: &Item<'a>, index: i64) -> Result<Vec<Row>, ViewError> {
        match &s.focus {
            Focus::Same => self.body_rows(s, focus, index),
            Focus::ForEach { path, or_null } => {
                let nodes = self.eval(path, focus, index)?;
                let mut rows = Vec::new();
                for (i, n) in nodes.iter().enumerate() {
                    rows.extend(self.body_rows(s, n, i as i64)?);
                }
                if nodes.is_empty() && *or_null {
                    // One row: its own columns on nothing (nulls, but
                    // %rowIndex is 0), the nested selects' all null.
                    let mut row = Vec::with_capacity(s.width);
                    for c in &s.columns {
                        row.push(self.column_value(c, &[], 0)?);
                    }
                    row.resize(s.width, Value::Null);
                    rows.push(row);
                }
                Ok(rows)
            }
            Focus::Repeat(paths) => {
                let mut nodes = Vec::new();
                self.descend(paths, focus, &mut nodes)?;
                let mut rows = Vec::new();
                for (i, n) in nodes.iter().enumerate() {
                    rows.extend(self.body_rows(s, n, i as i64)?);
                }
                Ok(rows)
            }
        }
    }

    /// Depth first: each node the paths reach from `focus`, then what
    /// they reach from it.
    fn descend(
        &self,
        paths: &[Path],
        focus: &Item<'a>,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), ViewError> {
        for p in paths {
            for n in self.eval(p, focus, 0)? {
                out.push(n.clone());
                self.descend(paths, &n, out)?;
            }
        }
        Ok(())
    }

    fn body_rows(&self, s: &Select, focus: &Item<'a>, index: i64) -> Result<Vec<Row>, ViewError> {
        let mut own = Vec::with_capacity(s.columns.len());
        for c in &s.columns {
            own.push(self.column_value(c, std::slice::from_ref(focus), index)?);
        }
        let mut rows = vec![own];
        for nested in &s.selects {
            rows = product(rows, self.select_rows(nested, focus, index)?);
        }
        if !s.union_all.is_empty() {
            let mut union = Vec::new();
            for branch in &s.union_all {
                union.extend(self.select_rows(branch, focus, index)?);
            }
            rows = product(rows, union);
        }
        Ok(rows)
    }

    fn column_value(&self, c: &Column, focus: &[Item<'a>], index: i64) -> Result<Value, ViewError> {
        let items = self.eval_on(&c.path, focus, index)?;
        if c.collection {
            return Ok(Value::Array(
                items.into_iter().map(|i| i.value.into_owned()).collect(),
            ));
        }
        match items.len() {
            0 => Ok(Value::Null),
            1 => Ok(items
                .into_iter()
                .next()
                .map(|i| i.value.into_owned())
                .unwrap_or(Value::Null)),
            n => Err(ViewError(format!(
                "column '{}' has {n} values; mark it \"collection\": true, or narrow its path",
                c.name
            ))),
        }
    }
}

#[cfg(test)]
mod root_element_tests {
    use serde_json::json;

    use super::View;

    fn roots(view: serde_json::Value) -> Option<Vec<String>> {
        View::parse(&view)
            .unwrap()
            .root_elements()
            .map(|s| s.into_iter().collect())
    }

    #[test]
    fn a_view_names_the_top_level_elements_it_reads() {
        let view = json!({"resource": "Observation", "where": [{"path": "status = 'final'"}],
            "select": [
                {"column": [{"name": "id", "path": "getResourceKey()"},
                            {"name": "v", "path": "value.ofType(Quantity).value"}]},
                {"forEach": "code.coding", "column": [{"name": "c", "path": "code"}]}]});
        assert_eq!(
            roots(view),
            Some(vec![
                "code".into(),
                "id".into(),
                "status".into(),
                "value".into()
            ])
        );
        let read = View::parse(&json!({"resource": "Observation", "select": [{"column": [
            {"name": "v", "path": "value.ofType(Quantity).value"}]}]}))
        .unwrap()
        .read_resource(r#"{"resourceType":"Observation","id":"o","text":{"div":"<div/>"},"valueQuantity":{"value":1},"_status":{"x":1}}"#)
        .unwrap();
        assert_eq!(
            read,
            json!({"resourceType": "Observation", "valueQuantity": {"value": 1}})
        );
        // What can reach the whole resource disables the pruning.
        for path in [
            "%resource.id",
            "$this.id",
            "ofType(Observation).id",
            "extension('u')",
        ] {
            let view = json!({"resource": "Observation", "select": [{"column": [{"name": "c", "path": path}]}]});
            assert_eq!(roots(view), None, "{path}");
        }
    }
}
