//! Which `PreviewRepository` owns a repository. The rules live in
//! [`previewd_kube::tenancy`], where the controller applies them to every environment
//! too; the webhook uses them to decide which settings a delivery is rendered from.

pub use previewd_kube::tenancy::{
    ClaimPolicy, ClaimVerdict, REASON_BOUND, REASON_CONFLICT, REASON_NOT_ALLOWED, Resolution,
    resolve,
};
