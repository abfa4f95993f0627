//! Calico Tier: an ordered group of policies. Tiers are evaluated in ascending `order`
//! (unset = last); a packet no policy in a tier decides meets the tier's `defaultAction`.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::types::{FieldErrors, validate_order};

/// The tier policies land in when they name none; Kubernetes NetworkPolicies live here too.
pub const DEFAULT_TIER: &str = "default";
/// Order of the `default` tier, as Calico creates it.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TierSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    /// Lower first; unset sorts after every ordered tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens at the end of the tier when a policy selected the endpoint but no rule
    /// decided: `Deny` (Calico's default) or `Pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierDefaultAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TierDefaultAction {
    #[default]
    Deny,
    Pass,
}

impl Tier {
    /// The `default` tier as Calico creates it.
    pub fn default_tier() -> Tier {
        Tier {
            metadata: ObjectMeta::named(DEFAULT_TIER),
            spec: TierSpec {
                order: Some(DEFAULT_TIER_ORDER),
                default_action: Some(TierDefaultAction::Deny),
            },
        }
    }

    pub(crate) fn apply_defaults(&mut self) {
        if self.metadata.name == DEFAULT_TIER && self.spec.order.is_none() {
            self.spec.order = Some(DEFAULT_TIER_ORDER);
        }
        self.spec
            .default_action
            .get_or_insert(TierDefaultAction::Deny);
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        validate_order(self.spec.order, "spec.order", errs);
        if self.metadata.name == DEFAULT_TIER && self.spec.order != Some(DEFAULT_TIER_ORDER) {
            errs.add(
                "spec.order",
                format!("the default tier's order is fixed at {DEFAULT_TIER_ORDER}"),
            );
        }
    }
}
