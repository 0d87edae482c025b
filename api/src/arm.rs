//! Azure Resource Manager IDs of the resources users may name in a spec.

use std::fmt;

/// A parsed `/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Network/publicIPPrefixes/<name>`.
///
/// ARM treats the provider namespace, the resource type and the fixed segments case-insensitively, so this
/// does too; the subscription must be a GUID, and the group and name must be names Azure accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicIpPrefixId {
    /// Subscription GUID, lower-cased.
    pub subscription: String,
    /// Resource group as written.
    pub resource_group: String,
    /// Prefix name as written.
    pub name: String,
}

/// Why an ARM ID was refused; the text says what a well-formed ID looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArmIdError {
    /// The ID does not have the segments of a resource ID.
    #[error(
        "is not an ARM resource ID of the form /subscriptions/<subscription-id>/resourceGroups/<group>/providers/Microsoft.Network/publicIPPrefixes/<name>"
    )]
    Malformed,
    /// The ID names a resource of another type.
    #[error("names a {0} resource; a Microsoft.Network/publicIPPrefixes resource is required")]
    WrongType(String),
    /// The subscription segment is not a GUID.
    #[error("has subscription '{0}', which is not a subscription ID (a GUID)")]
    BadSubscription(String),
    /// The resource group segment is not a valid group name.
    #[error(
        "has resource group '{0}', which is not a valid resource group name (1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.')"
    )]
    BadResourceGroup(String),
    /// The name segment is not a valid prefix name.
    #[error(
        "has name '{0}', which is not a valid public IP prefix name (1-80 letters, digits, '_', '-' or '.', starting with a letter or digit and ending with a letter, digit or '_')"
    )]
    BadName(String),
}

impl fmt::Display for PublicIpPrefixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/publicIPPrefixes/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

/// Parses a BYO public IP prefix ID.
pub fn parse_public_ip_prefix_id(id: &str) -> Result<PublicIpPrefixId, ArmIdError> {
    let rest = id.strip_prefix('/').ok_or(ArmIdError::Malformed)?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(ArmIdError::Malformed);
    }
    if segs.len() != 8 {
        // A resource of another type may still be recognisable: report that rather than "malformed".
        if segs.len() >= 8
            && segs[0].eq_ignore_ascii_case("subscriptions")
            && segs[4].eq_ignore_ascii_case("providers")
        {
            return Err(ArmIdError::WrongType(format!(
                "{}/{}",
                segs[5],
                segs[6..segs.len() - 1].join("/")
            )));
        }
        return Err(ArmIdError::Malformed);
    }
    if !segs[0].eq_ignore_ascii_case("subscriptions")
        || !segs[2].eq_ignore_ascii_case("resourceGroups")
        || !segs[4].eq_ignore_ascii_case("providers")
    {
        return Err(ArmIdError::Malformed);
    }
    if !segs[5].eq_ignore_ascii_case("Microsoft.Network") || !segs[6].eq_ignore_ascii_case("publicIPPrefixes")
    {
        return Err(ArmIdError::WrongType(format!("{}/{}", segs[5], segs[6])));
    }
    let subscription = segs[1];
    if uuid::Uuid::try_parse(subscription).is_err() || subscription.len() != 36 {
        return Err(ArmIdError::BadSubscription(subscription.to_string()));
    }
    let rg = segs[3];
    if !valid_resource_group(rg) {
        return Err(ArmIdError::BadResourceGroup(rg.to_string()));
    }
    let name = segs[7];
    if !valid_network_resource_name(name) {
        return Err(ArmIdError::BadName(name.to_string()));
    }
    Ok(PublicIpPrefixId {
        subscription: subscription.to_ascii_lowercase(),
        resource_group: rg.to_string(),
        name: name.to_string(),
    })
}

/// Azure resource group naming rules.
pub fn valid_resource_group(rg: &str) -> bool {
    (1..=90).contains(&rg.len())
        && !rg.ends_with('.')
        && rg
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
}

/// Naming rules of Microsoft.Network resources such as publicIPPrefixes.
pub fn valid_network_resource_name(name: &str) -> bool {
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    (1..=80).contains(&name.len())
        && first.is_ascii_alphanumeric()
        && (last.is_ascii_alphanumeric() || last == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    #[test]
    fn accepts_well_formed_ids_in_any_case() {
        for id in [
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg-egress/providers/Microsoft.Network/publicIPPrefixes/my-prefix"
            ),
            format!(
                "/subscriptions/{SUB}/resourcegroups/rg-egress/providers/microsoft.network/publicipprefixes/my-prefix"
            ),
            format!(
                "/SUBSCRIPTIONS/{}/RESOURCEGROUPS/RG.(x)_y/PROVIDERS/MICROSOFT.NETWORK/PUBLICIPPREFIXES/P_",
                SUB.to_uppercase()
            ),
        ] {
            let parsed = parse_public_ip_prefix_id(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(parsed.subscription, SUB);
        }
    }

    #[test]
    fn refuses_malformed_ids_with_the_reason() {
        let cases = [
            ("", ArmIdError::Malformed),
            ("my-prefix", ArmIdError::Malformed),
            (
                &*format!(
                    "subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p"
                ),
                ArmIdError::Malformed,
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p/"
                ),
                ArmIdError::Malformed,
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups//providers/Microsoft.Network/publicIPPrefixes/p"
                ),
                ArmIdError::Malformed,
            ),
            (
                &*format!(
                    "/subscription/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p"
                ),
                ArmIdError::Malformed,
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/p"
                ),
                ArmIdError::WrongType("Microsoft.Network/publicIPAddresses".into()),
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/publicIPPrefixes/p"
                ),
                ArmIdError::WrongType("Microsoft.Compute/publicIPPrefixes".into()),
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
                ),
                ArmIdError::WrongType("Microsoft.Network/virtualNetworks/v/subnets".into()),
            ),
            (
                "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p",
                ArmIdError::BadSubscription("not-a-guid".into()),
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg./providers/Microsoft.Network/publicIPPrefixes/p"
                ),
                ArmIdError::BadResourceGroup("rg.".into()),
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/-p"
                ),
                ArmIdError::BadName("-p".into()),
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p-"
                ),
                ArmIdError::BadName("p-".into()),
            ),
        ];
        for (id, want) in cases {
            assert_eq!(parse_public_ip_prefix_id(id), Err(want), "{id}");
        }
    }

    #[test]
    fn display_round_trips() {
        let id =
            format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p");
        let parsed = parse_public_ip_prefix_id(&id).expect("valid");
        assert_eq!(parsed.to_string(), id);
    }
}
