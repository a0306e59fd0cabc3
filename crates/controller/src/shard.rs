//! Shards: which shard a deployment is in, and which controller should own
//! which shard.
//!
//! A deployment's shard is a stable hash of its id (FNV-1a, 64-bit, fixed
//! here forever: changing it would move every deployment at an upgrade),
//! modulo the shard count (64 by default).
//!
//! Ownership is computed by every controller from the same input, the set of
//! live controllers, so they agree without talking to each other: for each
//! shard in order, the controllers are ranked by a hash of (shard,
//! controller) and the shard goes to the best-ranked one that still has room
//! under its quota (`ceil(shards / controllers)`; the first `shards %
//! controllers` in id order get the ceiling, the rest the floor). This is
//! rendezvous hashing with capacities: the split is as even as it can be,
//! and a controller joining or leaving moves few shards.

use std::collections::BTreeMap;

/// Shards a cluster has unless configured otherwise.
pub const DEFAULT_SHARDS: u32 = 64;

/// FNV-1a over `bytes`, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A final avalanche (splitmix64's), so that nearby inputs rank independently.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The shard of `deployment` among `shards` (≥ 1).
pub fn shard_of(deployment: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    u32::try_from(mix(fnv1a(deployment.as_bytes())) % shards).unwrap_or(0)
}

fn rank(shard: u32, controller: &str) -> u64 {
    let mut bytes = shard.to_be_bytes().to_vec();
    bytes.extend_from_slice(controller.as_bytes());
    mix(fnv1a(&bytes))
}

/// Which controller should own each of `shards` shards, given the live
/// controllers (their ids; order and duplicates do not matter). Empty when
/// no controller is live.
pub fn assignment(shards: u32, controllers: &[String]) -> BTreeMap<u32, String> {
    let mut ids: Vec<&String> = controllers.iter().collect();
    ids.sort();
    ids.dedup();
    let mut owners = BTreeMap::new();
    if ids.is_empty() {
        return owners;
    }
    let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    let (base, extra) = (shards / n, shards % n);
    let mut room: BTreeMap<&String, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let quota = base + u32::from(u32::try_from(i).unwrap_or(u32::MAX) < extra);
            (*id, quota)
        })
        .collect();
    for shard in 0..shards {
        let mut ranked = ids.clone();
        ranked.sort_by_key(|id| (std::cmp::Reverse(rank(shard, id)), *id));
        if let Some(owner) = ranked.into_iter().find(|id| room[id] > 0) {
            if let Some(left) = room.get_mut(owner) {
                *left -= 1;
            }
            owners.insert(shard, owner.clone());
        }
    }
    owners
}

/// The shards `controller` should own.
pub fn shards_of(shards: u32, controllers: &[String], controller: &str) -> Vec<u32> {
    assignment(shards, controllers)
        .into_iter()
        .filter(|(_, owner)| owner == controller)
        .map(|(shard, _)| shard)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_shard_hash_is_frozen() {
        // Never edit these: a change would move deployments between shards
        // (and owners) at an upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let got: Vec<u32> = ["dep_1", "dep_2", "llama-70b-prod", ""]
            .iter()
            .map(|d| shard_of(d, 64))
            .collect();
        assert_eq!(got, FROZEN_SHARDS);
    }

    const FROZEN_SHARDS: [u32; 4] = [49, 28, 31, 27];

    #[test]
    fn shards_spread_over_deployments() {
        let mut counts = [0u32; 64];
        for i in 0..64_000 {
            counts[shard_of(&format!("dep_{i}"), 64) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn every_shard_has_one_owner_and_the_split_is_even() {
        for n in 1..=7 {
            let controllers: Vec<String> = (0..n).map(|i| format!("ctl-{i}")).collect();
            let owners = assignment(64, &controllers);
            assert_eq!(owners.len(), 64);
            let mut per: BTreeMap<&String, u32> = BTreeMap::new();
            for owner in owners.values() {
                *per.entry(owner).or_default() += 1;
            }
            let (lo, hi) = (64 / n, 64_u32.div_ceil(n));
            assert!(per.values().all(|&c| c == lo || c == hi), "{n}: {per:?}");
            assert_eq!(u32::try_from(per.len()).unwrap(), n);
        }
        assert!(assignment(64, &[]).is_empty());
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = assignment(64, &ids(&["b", "a", "c"]));
        let b = assignment(64, &ids(&["c", "a", "b", "a"]));
        assert_eq!(a, b);
    }

    #[test]
    fn a_joining_controller_takes_about_its_share_and_others_keep_theirs() {
        let before = assignment(64, &ids(&["a", "b"]));
        let after = assignment(64, &ids(&["a", "b", "c"]));
        let moved: Vec<u32> = (0..64).filter(|s| before[s] != after[s]).collect();
        // c takes 21 or 22; few shards move between a and b.
        let to_c = moved.iter().filter(|s| after[*s] == "c").count();
        assert!((21..=22).contains(&to_c), "{to_c}");
        assert!(moved.len() <= to_c + 8, "{} moved", moved.len());
        // Leaving: the survivor gets everything.
        let alone = assignment(64, &ids(&["b"]));
        assert!(alone.values().all(|o| o == "b"));
        assert_eq!(shards_of(64, &ids(&["a", "b"]), "a").len(), 32);
    }
}
