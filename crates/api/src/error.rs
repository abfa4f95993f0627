use serval_model::ResourceKey;
use serval_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] serval_model::ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key} already exists; use `serval apply` to update it")]
    AlreadyExists { key: ResourceKey },
    #[error("{key} not found")]
    NotFound { key: ResourceKey },
    #[error("{key}: metadata.resourceVersion {value:?} is not a revision number")]
    BadResourceVersion { key: ResourceKey, value: String },
    #[error(
        "stored value at {key} does not decode ({reason}); the datastore holds data this version does not understand"
    )]
    Corrupt { key: String, reason: String },
    #[error("{key}: {field} {reason}")]
    Immutable {
        key: ResourceKey,
        field: String,
        reason: String,
    },
    #[error("{key}: {field}: {reason}")]
    Allocation {
        key: ResourceKey,
        field: String,
        reason: String,
    },
    #[error("datastore key {key} is not a resource key")]
    BadKey { key: String },
}
