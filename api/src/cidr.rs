//! The excludeCidrs bounds and syntax as the CRD schema (`sgc`) states them. Not in `rules`, whose parser
//! the pattern mirrors: `rules` imports `sgc`, so `sgc` importing `rules` would make a module cycle.

/// The syntax [`crate::rules::parse_ipv4_cidr`] accepts, as an RE2 pattern for the CRD schema (CEL `matches`): four decimal
/// octets 0-255 without leading zeros, a prefix length 0-32 without leading zeros, nothing around them.
pub const IPV4_CIDR_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])/(3[0-2]|[12][0-9]|[0-9])$";

/// The schema's message for an excludeCidrs entry that is not an IPv4 CIDR (the schema cannot quote the value;
/// the webhook, operator and Terraform provider say which mistake it is).
pub const EXCLUDE_CIDR_SCHEMA_MESSAGE: &str = "rule 7 (valid excludeCidrs): must be an IPv4 CIDR such as 10.0.0.0/16, \
     without spaces (a single address is written 1.2.3.4/32; IPv6 is not supported)";

/// At most this many excludeCidrs entries (a schema bound that keeps rule 7's CEL cost estimate small).
pub const MAX_EXCLUDE_CIDRS: u32 = 256;

/// Longest excludeCidrs entry the schema accepts (`255.255.255.255/32` has 18 characters).
pub const MAX_CIDR_LENGTH: u32 = 64;
