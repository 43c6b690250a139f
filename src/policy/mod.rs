//! Labels and label selectors with Kubernetes' semantics: the vocabulary
//! of network policy (which sandboxes a policy selects, and which peers
//! it lets in or out). No I/O.

mod labels;
mod selector;

pub use labels::Labels;
pub use selector::{Requirement, Selector};
