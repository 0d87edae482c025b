//! IP address bookkeeping: private addresses inside subnets and public addresses inside the simulated
//! public range. Pure data structures, no I/O, so the invariants (no duplicates, reserved addresses,
//! exhaustion) can be tested directly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::ArmError;

/// Allocated keys (addresses or blocks) and who holds each: owners are resource or IP-configuration IDs,
/// compared case-insensitively as ARM does.
#[derive(Debug, Clone)]
pub struct Owned<K: Ord>(BTreeMap<K, String>);

/// Releasing and listing, the same for every pool: each keeps its allocations in an [`Owned`] map.
pub trait Allocations {
    type Key: Ord + Copy;

    fn owned(&self) -> &Owned<Self::Key>;
    fn owned_mut(&mut self) -> &mut Owned<Self::Key>;

    /// Releases what `owner` holds.
    fn release(&mut self, owner: &str) {
        self.owned_mut().release(owner);
    }

    /// Releases everything whose owner starts with `prefix` (all IP configurations of a resource).
    fn release_prefix(&mut self, prefix: &str) {
        self.owned_mut().release_prefix(prefix);
    }

    /// Every allocation and its owner.
    fn allocations(&self) -> impl Iterator<Item = (&Self::Key, &String)> {
        self.owned().0.iter()
    }

    /// [`Self::allocations`], owned (for inventory dumps and invariants).
    fn allocation_list(&self) -> Vec<(Self::Key, String)> {
        self.allocations().map(|(k, o)| (*k, o.clone())).collect()
    }
}

macro_rules! allocations_in {
    ($pool:ty, $key:ty, $field:ident) => {
        impl Allocations for $pool {
            type Key = $key;
            fn owned(&self) -> &Owned<$key> {
                &self.$field
            }
            fn owned_mut(&mut self) -> &mut Owned<$key> {
                &mut self.$field
            }
        }
    };
}
allocations_in!(SubnetPool, Ipv4Addr, used);
allocations_in!(PublicRange, Ipv4Net, allocated);
allocations_in!(PrefixPool, Ipv4Addr, used);

impl<K: Ord + Copy> Owned<K> {
    fn new() -> Self {
        Owned(BTreeMap::new())
    }

    /// What `owner` holds.
    fn of(&self, owner: &str) -> Option<K> {
        self.0
            .iter()
            .find(|(_, o)| o.eq_ignore_ascii_case(owner))
            .map(|(k, _)| *k)
    }

    fn insert(&mut self, key: K, owner: &str) {
        self.0.insert(key, owner.to_owned());
    }

    fn release(&mut self, owner: &str) {
        self.0.retain(|_, o| !o.eq_ignore_ascii_case(owner));
    }

    /// Releases everything whose owner starts with `prefix` (all IP configurations of a resource).
    fn release_prefix(&mut self, prefix: &str) {
        let prefix = prefix.to_ascii_lowercase();
        self.0.retain(|_, o| !o.to_ascii_lowercase().starts_with(&prefix));
    }
}

/// Private addresses of one subnet. Azure reserves the network address, the first three host addresses
/// (gateway and Azure DNS) and the broadcast address of every subnet.
#[derive(Debug, Clone)]
pub struct SubnetPool {
    net: Ipv4Net,
    /// address -> owner (lower-cased ID of the IP configuration holding it)
    used: Owned<Ipv4Addr>,
}

impl SubnetPool {
    pub fn new(net: Ipv4Net) -> Self {
        Self {
            net: net.trunc(),
            used: Owned::new(),
        }
    }

    pub fn prefix(&self) -> Ipv4Net {
        self.net
    }

    /// True for the five addresses Azure keeps for itself.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let base = u32::from(self.net.network());
        let last = u32::from(self.net.broadcast());
        let v = u32::from(ip);
        v == last || (v >= base && v <= base.saturating_add(3))
    }

    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.used.0.get(&ip).map(String::as_str)
    }

    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.used.of(owner)
    }

    /// Dynamic allocation: lowest free, non-reserved address. Idempotent per owner.
    pub fn allocate(&mut self, owner: &str, subnet_id: &str) -> Result<Ipv4Addr, ArmError> {
        if let Some(ip) = self.address_of(owner) {
            return Ok(ip);
        }
        let free = self
            .net
            .hosts()
            .find(|ip| !self.is_reserved(*ip) && !self.used.0.contains_key(ip));
        match free {
            Some(ip) => {
                self.used.insert(ip, owner);
                Ok(ip)
            }
            None => Err(ArmError::bad_request(
                "SubnetIsFull",
                format!(
                    "Subnet {subnet_id} with address prefix {} does not have enough capacity for 1 IP addresses.",
                    self.net
                ),
            )),
        }
    }

    /// Static allocation of a caller-chosen address.
    pub fn allocate_static(&mut self, owner: &str, ip: Ipv4Addr, subnet_id: &str) -> Result<(), ArmError> {
        if !self.net.contains(&ip) {
            return Err(ArmError::bad_request(
                "PrivateIPAddressNotInSubnet",
                format!(
                    "IP address {ip} does not belong to subnet {subnet_id} with prefix {}.",
                    self.net
                ),
            ));
        }
        if self.is_reserved(ip) {
            return Err(ArmError::bad_request(
                "PrivateIPAddressIsReserved",
                format!("IP address {ip} is reserved by Azure in subnet {subnet_id}."),
            ));
        }
        match self.used.0.get(&ip) {
            Some(o) if !o.eq_ignore_ascii_case(owner) => Err(ArmError::bad_request(
                "PrivateIPAddressInUse",
                format!("IP address {ip} is already in use by {o}."),
            )),
            _ => {
                self.release(owner);
                self.used.insert(ip, owner);
                Ok(())
            }
        }
    }
}

/// The simulated public address space: public IP prefixes are carved out of it, aligned on their
/// length, first fit; standalone public IPs take a /32.
#[derive(Debug, Clone)]
pub struct PublicRange {
    ranges: Vec<Ipv4Net>,
    /// allocated block -> owner (lower-cased resource ID)
    allocated: Owned<Ipv4Net>,
}

impl PublicRange {
    pub fn new(ranges: Vec<Ipv4Net>) -> Self {
        Self {
            ranges: ranges.into_iter().map(|r| r.trunc()).collect(),
            allocated: Owned::new(),
        }
    }

    pub fn block_of(&self, owner: &str) -> Option<Ipv4Net> {
        self.allocated.of(owner)
    }

    pub fn allocate(&mut self, owner: &str, prefix_len: u8) -> Result<Ipv4Net, ArmError> {
        if let Some(n) = self.block_of(owner) {
            return Ok(n);
        }
        for range in &self.ranges {
            let Ok(mut blocks) = range.subnets(prefix_len) else {
                continue;
            };
            if let Some(block) =
                blocks.find(|b| !self.allocated.0.keys().any(|a| a.contains(b) || b.contains(a)))
            {
                self.allocated.insert(block, owner);
                return Ok(block);
            }
        }
        Err(ArmError::bad_request(
            "PublicIPPrefixAllocationFailed",
            format!("No contiguous block of length /{prefix_len} is available in the public address range."),
        ))
    }
}

/// Addresses handed out inside one public IP prefix (no reserved addresses in public prefixes).
#[derive(Debug, Clone)]
pub struct PrefixPool {
    pub block: Ipv4Net,
    used: Owned<Ipv4Addr>,
}

impl PrefixPool {
    pub fn new(block: Ipv4Net) -> Self {
        Self {
            block,
            used: Owned::new(),
        }
    }

    pub fn allocate(&mut self, owner: &str, prefix_id: &str) -> Result<Ipv4Addr, ArmError> {
        if let Some(ip) = self.used.of(owner) {
            return Ok(ip);
        }
        let first = u32::from(self.block.network());
        let count = 1u64 << (32 - u32::from(self.block.prefix_len()));
        let free = (0..count)
            .filter_map(|i| u32::try_from(i).ok())
            .map(|i| Ipv4Addr::from(first.wrapping_add(i)))
            .find(|ip| !self.used.0.contains_key(ip));
        match free {
            Some(ip) => {
                self.used.insert(ip, owner);
                Ok(ip)
            }
            None => Err(ArmError::bad_request(
                "PublicIPPrefixOutOfIpAddressesForPublicIPAddress",
                format!(
                    "Public IP prefix {prefix_id} ({}) has no free addresses left.",
                    self.block
                ),
            )),
        }
    }

    /// Gives `owner` back the address it held (keeps public addresses stable across updates).
    pub fn restore(&mut self, owner: &str, ip: Ipv4Addr) {
        if self.block.contains(&ip) {
            self.used.insert(ip, owner);
        }
    }

    pub fn owners(&self) -> impl Iterator<Item = &String> {
        self.used.0.values()
    }

    pub fn is_empty(&self) -> bool {
        self.used.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn subnet_skips_the_five_reserved_addresses_and_exhausts() {
        let mut pool = SubnetPool::new(net("10.0.0.0/29"));
        // /29 = 8 addresses, 5 reserved => 3 usable: .4 .5 .6
        let a = pool.allocate("a", "s").expect("first");
        let b = pool.allocate("b", "s").expect("second");
        let c = pool.allocate("c", "s").expect("third");
        assert_eq!([a, b, c].map(|ip| ip.octets()[3]), [4, 5, 6]);
        let err = pool.allocate("d", "s").expect_err("subnet full");
        assert_eq!(err.code, "SubnetIsFull");
        assert_eq!(pool.allocate("a", "s").expect("idempotent"), a);
        pool.release("b");
        assert_eq!(pool.allocate("d", "s").expect("reuse"), b);
    }

    #[test]
    fn static_allocation_checks_subnet_reserved_and_conflicts() {
        let mut pool = SubnetPool::new(net("10.0.0.0/24"));
        let e = pool
            .allocate_static("x", "10.0.1.5".parse().expect("ip"), "s")
            .expect_err("outside");
        assert_eq!(e.code, "PrivateIPAddressNotInSubnet");
        let e = pool
            .allocate_static("x", "10.0.0.1".parse().expect("ip"), "s")
            .expect_err("reserved");
        assert_eq!(e.code, "PrivateIPAddressIsReserved");
        pool.allocate_static("x", "10.0.0.10".parse().expect("ip"), "s")
            .expect("free");
        let e = pool
            .allocate_static("y", "10.0.0.10".parse().expect("ip"), "s")
            .expect_err("taken");
        assert_eq!(e.code, "PrivateIPAddressInUse");
    }

    #[test]
    fn public_range_aligns_blocks_and_never_overlaps() {
        let mut r = PublicRange::new(vec![net("20.0.0.0/28")]);
        let a = r.allocate("a", 31).expect("a");
        let b = r.allocate("b", 29).expect("b");
        let c = r.allocate("c", 30).expect("c");
        assert_eq!(a, net("20.0.0.0/31"));
        assert_eq!(b, net("20.0.0.8/29"));
        assert_eq!(c, net("20.0.0.4/30"));
        assert!(r.allocate("d", 29).is_err());
        r.release("b");
        assert_eq!(r.allocate("d", 29).expect("d"), net("20.0.0.8/29"));
    }

    #[test]
    fn prefix_pool_hands_out_every_address_once() {
        let mut p = PrefixPool::new(net("20.0.0.4/31"));
        assert_eq!(
            p.allocate("x", "p").expect("x"),
            "20.0.0.4".parse::<Ipv4Addr>().expect("ip")
        );
        assert_eq!(
            p.allocate("y", "p").expect("y"),
            "20.0.0.5".parse::<Ipv4Addr>().expect("ip")
        );
        assert!(p.allocate("z", "p").is_err());
    }

    proptest::proptest! {
        /// Any sequence of allocations and releases keeps the invariants: addresses inside the subnet,
        /// never one of the five reserved ones, never two owners on one address, and an owner's address
        /// is stable until released.
        #[test]
        fn subnet_pool_invariants(ops in proptest::collection::vec((0u8..12, proptest::bool::ANY), 1..80)) {
            let mut pool = SubnetPool::new(net("10.1.0.0/28"));
            let mut held: std::collections::BTreeMap<String, Ipv4Addr> = Default::default();
            for (who, release) in ops {
                let owner = format!("o{who}");
                if release {
                    pool.release(&owner);
                    held.remove(&owner);
                    continue;
                }
                match pool.allocate(&owner, "s") {
                    Ok(ip) => {
                        proptest::prop_assert!(pool.prefix().contains(&ip));
                        proptest::prop_assert!(!pool.is_reserved(ip));
                        if let Some(prev) = held.insert(owner.clone(), ip) {
                            proptest::prop_assert_eq!(prev, ip);
                        }
                    }
                    Err(e) => {
                        proptest::prop_assert_eq!(e.code.as_str(), "SubnetIsFull");
                        // /28 has 16 - 5 = 11 usable addresses.
                        proptest::prop_assert_eq!(held.len(), 11);
                    }
                }
                let mut seen = std::collections::BTreeSet::new();
                for (ip, _) in pool.allocations() {
                    proptest::prop_assert!(seen.insert(*ip));
                }
                proptest::prop_assert_eq!(seen.len(), held.len());
            }
        }
    }
}
