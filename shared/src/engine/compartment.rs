//! Reading a patient's compartment through the store's compartment index:
//! what Patient-level and Group-level exports and patient view runs share.

use crate::domain::resource::Version;
use crate::ports::{PortResult, ResourceStore};

/// One page of `patient`'s versions of `resource_type` as of `as_of`,
/// whether the page is full (more may follow) and the last id read. A
/// Patient is its own compartment: one read, never full. The index lists
/// whatever ever referenced the patient, so callers re-check each version.
pub(crate) async fn compartment_page(
    store: &dyn ResourceStore,
    resource_type: &str,
    patient: &str,
    after_id: Option<&str>,
    limit: usize,
    as_of: i64,
) -> PortResult<(Vec<Version>, bool, Option<String>)> {
    if resource_type == "Patient" {
        let v = store.read_as_of("Patient", patient, as_of).await?;
        return Ok((v.into_iter().collect(), false, None));
    }
    let ids = store
        .compartment_ids(patient, resource_type, after_id, limit)
        .await?;
    let versions = store.read_many_as_of(resource_type, &ids, as_of).await?;
    Ok((versions, ids.len() == limit, ids.last().cloned()))
}
