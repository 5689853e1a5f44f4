//! A bounded "already decided" set of block ids.
//!
//! A backup remembers which ids it has settled (the store has them, or they arrived) so
//! as not to ask the store twice. Remembering every distinct id of a 16 TiB disk would cost
//! gigabytes, and forgetting one only costs a second question, so this is a direct-mapped
//! cache: each id has one slot, picked by its leading bytes (ids are BLAKE3 digests, so
//! evenly spread), and a newcomer evicts the slot's previous id.

use super::messages::WireId;

/// The default number of slots: 64 Ki ids, 2 MiB.
pub const DEFAULT_SLOTS: usize = 1 << 16;

/// A fixed-size cache of ids.
#[derive(Debug, Clone)]
pub struct IdCache {
    slots: Vec<Option<WireId>>,
}

impl Default for IdCache {
    fn default() -> IdCache {
        IdCache::with_slots(DEFAULT_SLOTS)
    }
}

impl IdCache {
    /// A cache of `n` slots (at least one).
    pub fn with_slots(n: usize) -> IdCache {
        IdCache {
            slots: vec![None; n.max(1)],
        }
    }

    fn slot(&self, id: &WireId) -> usize {
        let lead = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
        (lead % self.slots.len() as u64) as usize
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &WireId) -> bool {
        self.slots[self.slot(id)] == Some(*id)
    }

    /// Remembers `id`; returns whether it was new (not remembered before).
    pub fn insert(&mut self, id: WireId) -> bool {
        let s = self.slot(&id);
        let new = self.slots[s] != Some(id);
        self.slots[s] = Some(id);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_evicted_by_a_colliding_id() {
        let mut c = IdCache::with_slots(4);
        let id = |lead: u8| {
            let mut x = [0u8; 32];
            x[0] = lead;
            x[31] = 0xAA;
            x
        };
        assert!(c.insert(id(1)));
        assert!(!c.insert(id(1)));
        assert!(c.contains(&id(1)));
        assert!(c.insert(id(2)), "another slot");
        assert!(c.contains(&id(1)));
        assert!(c.insert(id(5)), "5 % 4 == 1: evicts 1");
        assert!(!c.contains(&id(1)));
        assert!(c.contains(&id(2)));
    }
}
