//! Calico-shaped `projectcalico.org/v3` kinds.

pub mod bgp;
pub mod felix;
pub mod hostendpoint;
pub mod ippool;
pub mod node;
pub mod policy;
pub mod tier;

pub use bgp::*;
pub use felix::*;
pub use hostendpoint::*;
pub use ippool::*;
pub use node::*;
pub use policy::*;
pub use tier::*;

use crate::selector::Selector;
use crate::types::FieldErrors;

/// Reports a Calico selector expression that does not parse.
pub(crate) fn check_selector(s: &str, path: &str, errs: &mut FieldErrors) {
    if let Err(e) = Selector::parse(s) {
        errs.add(path, format!("selector {s:?} does not parse: {e}"));
    }
}
