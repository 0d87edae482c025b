//! Our nftables table ([`NFT_TABLE`]), shared by the pod namespace (CNI plugin) and the gateway namespace
//! (gateway agent): every script replaces the whole table in one `nft -f` transaction.

use api::names::NFT_TABLE;

/// First lines of every script that replaces our table in one transaction: ensure it exists, delete it,
/// then the caller re-creates it. `nft -f` applies the whole file atomically.
pub fn replace_table_preamble() -> String {
    format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

/// Script that removes our table (idempotent: the table is created first so deletion never fails).
pub fn delete_table_script() -> String {
    replace_table_preamble()
}
