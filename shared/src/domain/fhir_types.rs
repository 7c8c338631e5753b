//! Static FHIR R4 (4.0.1) tables: the element paths that place a resource in
//! a Patient's compartment, and the top-level elements that are mandatory
//! (min cardinality >= 1). The resource type names live in
//! [`fhir_query::resource_types`] and are re-exported here.
//!
//! Sources, all from the FHIR R4 4.0.1 specification:
//! - compartment: CompartmentDefinition `patient`
//!   (<https://hl7.org/fhir/R4/compartmentdefinition-patient.html>), each
//!   search parameter translated to the element path its R4 `SearchParameter`
//!   expression selects;
//! - mandatory elements: the R4 StructureDefinitions (element `min`).

pub use fhir_query::resource_types::{is_resource_type, RESOURCE_TYPES};

/// The types in the Patient compartment and their paths to the patient (see
/// [`patient_compartment_paths`]), in the order of the definition.
static PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[
    ("Account", &["subject"]),
    ("AdverseEvent", &["subject"]),
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    // actor: Appointment.participant.actor
    ("Appointment", &["participant.actor"]),
    ("AppointmentResponse", &["actor"]),
    // patient: AuditEvent.agent.who | AuditEvent.entity.what (Patient only)
    ("AuditEvent", &["agent.who", "entity.what"]),
    // patient: Basic.subject (Patient only); author
    ("Basic", &["subject", "author"]),
    ("BodyStructure", &["patient"]),
    // patient: CarePlan.subject; performer: CarePlan.activity.detail.performer
    ("CarePlan", &["subject", "activity.detail.performer"]),
    // patient: CareTeam.subject; participant: CareTeam.participant.member
    ("CareTeam", &["subject", "participant.member"]),
    ("ChargeItem", &["subject"]),
    // payee: Claim.payee.party
    ("Claim", &["patient", "payee.party"]),
    ("ClaimResponse", &["patient"]),
    ("ClinicalImpression", &["subject"]),
    ("Communication", &["subject", "sender", "recipient"]),
    (
        "CommunicationRequest",
        &["subject", "sender", "recipient", "requester"],
    ),
    // attester: Composition.attester.party
    ("Composition", &["subject", "author", "attester.party"]),
    // patient: Condition.subject
    ("Condition", &["subject", "asserter"]),
    ("Consent", &["patient"]),
    // policy-holder: Coverage.policyHolder
    (
        "Coverage",
        &["policyHolder", "subscriber", "beneficiary", "payor"],
    ),
    ("CoverageEligibilityRequest", &["patient"]),
    ("CoverageEligibilityResponse", &["patient"]),
    ("DetectedIssue", &["patient"]),
    ("DeviceRequest", &["subject", "performer"]),
    ("DeviceUseStatement", &["subject"]),
    ("DiagnosticReport", &["subject"]),
    ("DocumentManifest", &["subject", "author", "recipient"]),
    ("DocumentReference", &["subject", "author"]),
    // patient: Encounter.subject
    ("Encounter", &["subject"]),
    // subject: EnrollmentRequest.candidate
    ("EnrollmentRequest", &["candidate"]),
    ("EpisodeOfCare", &["patient"]),
    // payee: ExplanationOfBenefit.payee.party
    ("ExplanationOfBenefit", &["patient", "payee.party"]),
    ("FamilyMemberHistory", &["patient"]),
    // patient: Flag.subject
    ("Flag", &["subject"]),
    // patient: Goal.subject
    ("Goal", &["subject"]),
    // member: Group.member.entity
    ("Group", &["member.entity"]),
    // patient: ImagingStudy.subject
    ("ImagingStudy", &["subject"]),
    ("Immunization", &["patient"]),
    ("ImmunizationEvaluation", &["patient"]),
    ("ImmunizationRecommendation", &["patient"]),
    // subject, patient (Invoice.subject), recipient
    ("Invoice", &["subject", "recipient"]),
    // subject, source
    ("List", &["subject", "source"]),
    // patient: MeasureReport.subject
    ("MeasureReport", &["subject"]),
    ("Media", &["subject"]),
    // patient and subject: MedicationAdministration.subject;
    // performer: MedicationAdministration.performer.actor
    ("MedicationAdministration", &["subject", "performer.actor"]),
    // subject and patient: MedicationDispense.subject; receiver
    ("MedicationDispense", &["subject", "receiver"]),
    ("MedicationRequest", &["subject"]),
    ("MedicationStatement", &["subject"]),
    ("MolecularSequence", &["patient"]),
    ("NutritionOrder", &["patient"]),
    ("Observation", &["subject", "performer"]),
    // link: Patient.link.other
    ("Patient", &["link.other"]),
    // patient: Person.link.target (Patient only)
    ("Person", &["link.target"]),
    // patient: Procedure.subject; performer: Procedure.performer.actor
    ("Procedure", &["subject", "performer.actor"]),
    // patient: Provenance.target (Patient only)
    ("Provenance", &["target"]),
    ("QuestionnaireResponse", &["subject", "author"]),
    ("RelatedPerson", &["patient"]),
    // participant: RequestGroup.action.participant
    ("RequestGroup", &["subject", "action.participant"]),
    ("ResearchSubject", &["individual"]),
    ("RiskAssessment", &["subject"]),
    ("Schedule", &["actor"]),
    ("ServiceRequest", &["subject", "performer"]),
    ("Specimen", &["subject"]),
    ("SupplyDelivery", &["patient"]),
    // subject: SupplyRequest.deliverTo
    ("SupplyRequest", &["deliverTo"]),
    ("VisionPrescription", &["patient"]),
];

/// Element paths through which a resource of `resource_type` belongs to a
/// Patient's compartment, per the R4 CompartmentDefinition `patient`
/// (<https://hl7.org/fhir/R4/compartmentdefinition-patient.html>).
///
/// The definition lists search parameters; each is translated here to the
/// element its R4 `SearchParameter.expression` selects. A path is dotted and
/// relative to the resource root; every step may hold a single object or an
/// array, and the last step is a `Reference` (an object with a `reference`
/// string). `.where(resolve() is Patient)` filters are dropped: callers keep
/// only references that point at a Patient. Parameters that select the same
/// element appear once (e.g. Invoice `subject` and `patient` both search
/// `Invoice.subject`).
///
/// Returns `None` for types that are not in the patient compartment (e.g.
/// Organization, Practitioner, Medication, Device) and for unknown names.
pub fn patient_compartment_paths(resource_type: &str) -> Option<&'static [&'static str]> {
    PATIENT_COMPARTMENT
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, paths)| *paths)
}

/// Top-level elements of `resource_type` whose minimum cardinality is >= 1 in
/// R4 (4.0.1), as JSON property names, so that `_elements` never strips them.
///
/// A mandatory choice element (`x[x]`) is listed under every JSON name it can
/// take (e.g. Immunization `occurrence[x]` as `occurrenceDateTime` and
/// `occurrenceString`), so an exact key match keeps whichever is present.
///
/// Covered types: Patient, Observation, Encounter, Condition,
/// MedicationRequest, Procedure, DiagnosticReport, Immunization,
/// AllergyIntolerance, CarePlan, CareTeam, Claim, ExplanationOfBenefit,
/// ImagingStudy, Device, Group, Organization, Practitioner, Location,
/// Medication, DocumentReference, Coverage, Provenance. Any other type
/// returns `&[]` (no element is treated as mandatory).
pub fn mandatory_elements(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Observation" => &["status", "code"],
        "Encounter" => &["status", "class"],
        "Condition" => &["subject"],
        "MedicationRequest" => &[
            "status",
            "intent",
            "medicationCodeableConcept",
            "medicationReference",
            "subject",
        ],
        "Procedure" => &["status", "subject"],
        "DiagnosticReport" => &["status", "code"],
        "Immunization" => &[
            "status",
            "vaccineCode",
            "patient",
            "occurrenceDateTime",
            "occurrenceString",
        ],
        "AllergyIntolerance" => &["patient"],
        "CarePlan" => &["status", "intent", "subject"],
        "Claim" => &[
            "status",
            "type",
            "use",
            "patient",
            "created",
            "provider",
            "priority",
            "insurance",
        ],
        "ExplanationOfBenefit" => &[
            "status",
            "type",
            "use",
            "patient",
            "created",
            "insurer",
            "provider",
            "outcome",
            "insurance",
        ],
        "ImagingStudy" => &["status", "subject"],
        "Group" => &["type", "actual"],
        "DocumentReference" => &["status", "content"],
        "Coverage" => &["status", "beneficiary", "payor"],
        "Provenance" => &["target", "recorded", "agent"],
        // No top-level element has min >= 1 in R4 for: Patient, CareTeam,
        // Device, Organization, Practitioner, Location, Medication.
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compartment_paths() {
        assert_eq!(
            patient_compartment_paths("Observation"),
            Some(&["subject", "performer"][..])
        );
        assert_eq!(
            patient_compartment_paths("Encounter"),
            Some(&["subject"][..])
        );
        assert_eq!(
            patient_compartment_paths("Patient"),
            Some(&["link.other"][..])
        );
        assert_eq!(
            patient_compartment_paths("CareTeam"),
            Some(&["subject", "participant.member"][..])
        );
        assert_eq!(
            patient_compartment_paths("Claim"),
            Some(&["patient", "payee.party"][..])
        );
        assert_eq!(
            patient_compartment_paths("AllergyIntolerance"),
            Some(&["patient", "recorder", "asserter"][..])
        );
        assert_eq!(
            patient_compartment_paths("Group"),
            Some(&["member.entity"][..])
        );
        assert_eq!(patient_compartment_paths("Organization"), None);
        assert_eq!(patient_compartment_paths("Practitioner"), None);
        assert_eq!(patient_compartment_paths("Medication"), None);
        assert_eq!(patient_compartment_paths("Device"), None);
        assert_eq!(patient_compartment_paths("observation"), None);
    }

    #[test]
    fn compartment_types_are_resource_types_without_duplicate_paths() {
        let mut members = 0;
        for t in RESOURCE_TYPES {
            if let Some(paths) = patient_compartment_paths(t) {
                members += 1;
                assert!(!paths.is_empty(), "{t}");
                for (i, p) in paths.iter().enumerate() {
                    assert!(!p.is_empty() && !p.starts_with('.') && !p.ends_with('.'));
                    assert!(!paths[..i].contains(p), "{t}: duplicate {p}");
                }
            }
        }
        // 66 resource types are listed with parameters in the R4 definition.
        assert_eq!(members, 66);
    }

    #[test]
    fn mandatory() {
        assert_eq!(mandatory_elements("Observation"), &["status", "code"]);
        assert_eq!(mandatory_elements("Encounter"), &["status", "class"]);
        assert_eq!(mandatory_elements("Condition"), &["subject"]);
        assert!(mandatory_elements("Patient").is_empty());
        assert!(mandatory_elements("CareTeam").is_empty());
        assert!(mandatory_elements("Organization").is_empty());
        assert_eq!(
            mandatory_elements("Claim"),
            &[
                "status",
                "type",
                "use",
                "patient",
                "created",
                "provider",
                "priority",
                "insurance"
            ]
        );
        assert!(mandatory_elements("Immunization").contains(&"occurrenceDateTime"));
        assert!(mandatory_elements("Unknown").is_empty());
        for t in RESOURCE_TYPES {
            for e in mandatory_elements(t) {
                assert!(!e.contains('.') && !e.contains('['), "{t}.{e}");
            }
        }
    }
}
