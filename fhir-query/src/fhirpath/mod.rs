//! FHIRPath over `serde_json` values.
//!
//! Chosen over the FHIRPath crates after measuring them (see the developer
//! guide, docs/src/developer/architecture.md, "Why our own FHIRPath"): they
//! take minutes to build on a 2-core machine, and most need their own typed
//! FHIR model; this one reads the resources' JSON as stored. The parser
//! takes all of FHIRPath's grammar; the evaluator (`eval.rs`) calls the
//! functions through `functions.rs`, each family in its module
//! (`conversions`, `text`, `math`, `sets`, `boundaries`, `quantity`), and
//! fails clearly on a function it does not have. The official R4 suite
//! runs in `fhir-query/tests/fhirpath_suite.rs`.

mod boundaries;
mod conversions;
pub mod decimal;
mod eval;
mod functions;
mod math;
mod parse;
mod quantity;
mod sets;
mod temporal;
mod text;

use std::collections::HashMap;

use serde_json::Value;

pub use eval::{as_bool, field, EvalError, Item};
pub use functions::reference_parts;
pub use parse::{parse, Expr, ParseError};

/// A parsed expression, evaluated any number of times.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    expr: Expr,
}

impl Path {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Ok(Path { expr: parse(text)? })
    }

    /// The expression's result on `resource` (its focus and `%resource`).
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Result<Vec<Item<'a>>, EvalError> {
        static NONE: std::sync::OnceLock<HashMap<String, Vec<Item<'static>>>> =
            std::sync::OnceLock::new();
        let focus = [Item::of(resource)];
        self.evaluate_in(&focus, resource, NONE.get_or_init(HashMap::new), 0)
    }

    /// The result on `focus`, within `resource`, with `%` variables and
    /// `%rowIndex`.
    pub fn evaluate_in<'a>(
        &self,
        focus: &[Item<'a>],
        resource: &'a Value,
        variables: &'a HashMap<String, Vec<Item<'a>>>,
        row_index: i64,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let env = eval::Env {
            resource,
            variables,
            row_index,
            index: None,
            total: None,
        };
        eval::evaluate(&self.expr, focus, &env)
    }

    /// The `%name` variables the expression uses.
    pub fn variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.expr.variables(&mut out);
        out
    }

    /// The top-level elements the expression reads when evaluated on a
    /// resource; `None` if it may read anything.
    pub fn root_elements(&self) -> Option<Vec<String>> {
        let mut out = Vec::new();
        self.expr.root_elements(&mut out).then_some(out)
    }

    /// The first function the expression calls that the evaluator does not
    /// know, if any (found when a view is read, not on its first row).
    pub fn unsupported_function(&self) -> Option<String> {
        let mut out = Vec::new();
        self.expr.functions(&mut out);
        out.into_iter().find(|f| !functions::is_supported(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, resource: &Value) -> Vec<Value> {
        Path::parse(expr)
            .unwrap()
            .evaluate(resource)
            .unwrap()
            .into_iter()
            .map(|i| i.value.into_owned())
            .collect()
    }

    #[test]
    fn paths_choices_and_filters() {
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, {"system": "x", "code": "y"}]},
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 72, "unit": "/min"},
            "component": [{"valueString": "a"}, {"valueQuantity": {"value": 5}}]
        });
        assert_eq!(values("Observation.status", &obs), [json!("final")]);
        assert_eq!(values("Condition.code", &obs), Vec::<Value>::new());
        assert_eq!(values("Resource.id", &obs), [json!("o1")]);
        assert_eq!(
            values(
                "Observation.code.coding.where(system='http://loinc.org').code",
                &obs
            ),
            [json!("8867-4")]
        );
        assert_eq!(
            values("(Observation.value as Quantity).value", &obs),
            [json!(72)]
        );
        assert_eq!(
            values("Observation.value.ofType(Quantity).unit", &obs),
            [json!("/min")]
        );
        assert_eq!(
            values("Observation.value.ofType(string)", &obs),
            Vec::<Value>::new()
        );
        assert_eq!(
            values("Observation.component.value.ofType(String)", &obs),
            [json!("a")]
        );
        assert_eq!(
            values(
                "Observation.subject.where(resolve() is Patient).reference",
                &obs
            ),
            [json!("Patient/p1")]
        );
        assert_eq!(
            values("Observation.subject.where(resolve() is Group)", &obs),
            Vec::<Value>::new()
        );
        assert_eq!(
            values("Observation.subject.getReferenceKey(Patient)", &obs),
            [json!("p1")]
        );
        assert_eq!(values("getResourceKey()", &obs), [json!("o1")]);
        assert_eq!(
            values("Observation.code.coding.code.join(',')", &obs),
            [json!("8867-4,y")]
        );
        assert_eq!(
            values(
                "Observation.code.coding.count() > 1 and status = 'final'",
                &obs
            ),
            [json!(true)]
        );
        assert_eq!(
            values("Observation.nothing.exists() or {} ", &obs),
            Vec::<Value>::new()
        );
        assert_eq!(values("Observation.value.value + 1", &obs), [json!(73)]);
        assert_eq!(
            values("status | status | id", &obs),
            [json!("final"), json!("o1")]
        );
    }

    #[test]
    fn dates_compare_at_their_precision() {
        let enc = json!({"resourceType": "Encounter", "period": {"start": "2016-03-04T10:00:00Z"}});
        assert_eq!(
            values("Encounter.period.start > @2015-01-01", &enc),
            [json!(true)]
        );
        assert_eq!(
            values("Encounter.period.start < @2016", &enc),
            Vec::<Value>::new()
        );
    }

    #[test]
    fn primitives_carry_their_extensions() {
        let absent = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
        let p = json!({
            "resourceType": "Patient",
            "_birthDate": {"extension": [{"url": absent, "valueCode": "unknown"}]},
            "name": [{"given": ["Ann", null, "Bo"], "_given": [null, {"id": "g2"}]}]
        });
        // A birthDate with no value and its data-absent reason.
        assert_eq!(values("birthDate.hasValue()", &p), [json!(false)]);
        assert_eq!(
            values(&format!("birthDate.extension('{absent}').value"), &p),
            [json!("unknown")]
        );
        assert_eq!(values("birthDate.substring(0, 4)", &p), Vec::<Value>::new());
        // `_given` pairs with `given` item by item; a null with nothing
        // beside it is no item.
        assert_eq!(values("name.given.count()", &p), [json!(3)]);
        assert_eq!(values("name.given.id", &p), [json!("g2")]);
        assert_eq!(values("name.given.join(' ')", &p), [json!("Ann Bo")]);
    }

    #[test]
    fn unsupported_functions_are_errors() {
        let p =
            Path::parse("conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')").unwrap();
        let err = p.evaluate(&json!({"resourceType": "Patient"})).unwrap_err();
        assert!(err.0.contains("conformsTo"), "{err}");
        assert_eq!(p.unsupported_function().as_deref(), Some("conformsTo"));
    }
}
