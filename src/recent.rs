//! Parts of requests as a reader or writer made them, kept per thread for the
//! next request that sends the same bytes (agents send the same tools with every
//! turn): see [`Recent`].

/// What a reader or writer made of a part of a request (a check passed, a
/// translation), kept on this thread for the next request that sends the same
/// bytes: agents send the same tools with every turn, and checking them was a third
/// of reading an agent's request, cleaning 20 schemas for Gemini more than the rest
/// of translating it (bench/README.md, session 34). Per thread, so that no core waits for another
/// (issue 18); small (`MAX_ENTRIES` parts, `MAX_BYTES` of keys and values), the
/// least recently used going first; keyed by the bytes themselves (a length check,
/// then `memcmp`: no hashing of a 12 KB list, and no collisions).
pub struct Recent<V> {
    entries: Vec<RecentEntry<V>>,
    bytes: usize,
    clock: u64,
}

struct RecentEntry<V> {
    key: Box<[u8]>,
    value: std::rc::Rc<V>,
    /// Its key's and value's bytes.
    weight: usize,
    used: u64,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent::new()
    }
}

impl<V> Recent<V> {
    /// Room for the tool lists of the agents a thread serves (an agent's 20
    /// tools: 12 KB as sent, about as much declared), in each of the six places
    /// that keep them (the chat and Messages doors' checks, the Messages and
    /// Responses doors' tools as chat tools, Gemini's declarations, Anthropic's
    /// tools), and for the JSON tool results written for Gemini (a seventh): at
    /// most 3.5 MiB a thread however many lists and results clients send.
    const MAX_ENTRIES: usize = 32;
    const MAX_BYTES: usize = 512 << 10;

    pub const fn new() -> Recent<V> {
        Recent {
            entries: Vec::new(),
            bytes: 0,
            clock: 0,
        }
    }

    /// What was kept for `key`, else what `make` makes of it (kept unless the
    /// key and `weight` of what was made are more than a quarter of the budget).
    pub fn get_or_make(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> V,
        weight: impl FnOnce(&V) -> usize,
    ) -> std::rc::Rc<V> {
        if let Some((_, value)) = self.find(|kept| kept == key) {
            return value;
        }
        let value = make();
        let weight = weight(&value);
        self.insert(key, value, weight)
    }

    /// What was kept for a key that `text` starts with, and that key's length:
    /// for keys that are whole JSON lists or objects (which end where their
    /// brackets close, so that no other key is a prefix too), the value at the
    /// start of `text` is that key, found without walking it.
    pub fn get_prefix(&mut self, text: &[u8]) -> Option<(usize, std::rc::Rc<V>)> {
        self.find(|kept| text.starts_with(kept))
    }

    fn find(&mut self, matches: impl Fn(&[u8]) -> bool) -> Option<(usize, std::rc::Rc<V>)> {
        self.clock += 1;
        let entry = self.entries.iter_mut().find(|entry| matches(&entry.key))?;
        entry.used = self.clock;
        Some((entry.key.len(), entry.value.clone()))
    }

    /// Keeps `value` for `key` (unless the key and `weight`, the value's bytes,
    /// are more than a quarter of the budget), the least recently used entries
    /// going to make room.
    pub fn insert(&mut self, key: &[u8], value: V, weight: usize) -> std::rc::Rc<V> {
        let value = std::rc::Rc::new(value);
        let weight = key.len() + weight;
        if weight > Self::MAX_BYTES / 4 {
            return value;
        }
        while self.entries.len() >= Self::MAX_ENTRIES || self.bytes + weight > Self::MAX_BYTES {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .expect("a full cache has entries");
            self.bytes -= self.entries.swap_remove(oldest).weight;
        }
        self.bytes += weight;
        self.clock += 1;
        self.entries.push(RecentEntry {
            key: key.into(),
            value: value.clone(),
            weight,
            used: self.clock,
        });
        value
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;
    use std::cell::Cell;

    /// What is kept is found by its bytes alone; the least recently used goes
    /// first when the entries or the bytes run out; what weighs more than a
    /// quarter of the budget is made each time.
    #[test]
    fn recent_parts_are_kept_by_their_bytes_within_bounds() {
        type Kept = Recent<String>;
        let made = Cell::new(0);
        let mut recent = Kept::new();
        let get = |recent: &mut Kept, key: &[u8], weight: usize| {
            recent
                .get_or_make(
                    key,
                    || {
                        made.set(made.get() + 1);
                        String::from_utf8_lossy(key).into_owned()
                    },
                    |_| weight,
                )
                .to_string()
        };
        assert_eq!(get(&mut recent, b"ab", 1), "ab");
        assert_eq!(get(&mut recent, b"ba", 1), "ba");
        assert_eq!(get(&mut recent, b"ab", 1), "ab");
        assert_eq!(made.get(), 2);
        // As many more keys as leave room for one of the two: "ba" (least
        // recently used) goes first.
        let more = Kept::MAX_ENTRIES - 1;
        for i in 0..more {
            get(&mut recent, format!("key {i}").as_bytes(), 1);
        }
        assert_eq!(made.get(), 2 + more);
        get(&mut recent, b"ab", 1);
        assert_eq!(made.get(), 2 + more, "ab kept");
        get(&mut recent, b"ba", 1);
        assert_eq!(made.get(), 3 + more, "ba made again");
        assert!(recent.entries.len() <= Kept::MAX_ENTRIES);
        // Heavy values push out as many as they need.
        let heavy = Kept::MAX_BYTES / 4 - 10;
        for i in 0..4 {
            get(&mut recent, format!("heavy {i}").as_bytes(), heavy);
        }
        assert!(recent.bytes <= Kept::MAX_BYTES);
        assert_eq!(
            recent.bytes,
            recent.entries.iter().map(|e| e.weight).sum::<usize>()
        );
        let before = made.get();
        get(&mut recent, b"too heavy", Kept::MAX_BYTES);
        get(&mut recent, b"too heavy", Kept::MAX_BYTES);
        assert_eq!(made.get(), before + 2);
    }
}
