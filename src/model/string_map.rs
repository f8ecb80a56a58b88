//! `StringMap`: the labels and metadata of an object, a few strings each.
//!
//! A std `BTreeMap` allocates an eleven-slot node (about 550 bytes) for its first entry,
//! which was half of what a service with one metadata entry cost in memory on every node.
//! A sorted vector holds the same entries in what they need and is as fast to search at
//! these sizes (validation caps them at a few dozen). It encodes exactly as a `BTreeMap`
//! does, in JSON and in bincode, so logs and snapshots written before it read back.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map from string to string, ordered by key, each key once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StringMap {
    /// Sorted by key, keys unique.
    entries: Vec<(String, String)>,
}

impl StringMap {
    /// An empty map (allocates nothing).
    pub const fn new() -> StringMap {
        StringMap {
            entries: Vec::new(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// True when every `(key, value)` of `selector` is among the entries: how label
    /// selectors (list filters, watch filters, subsets) match.
    pub fn includes<'a>(
        &self,
        selector: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> bool {
        selector.into_iter().all(|(k, v)| self.get(k) == Some(v))
    }

    /// Builds the map from entries in any order; a repeated key keeps its last value, as
    /// inserting into a `BTreeMap` one by one would.
    fn from_entries(mut entries: Vec<(String, String)>) -> StringMap {
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted {
            // Stable, so equal keys stay in arrival order and the last one wins below.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    std::mem::swap(&mut later.1, &mut kept.1);
                    true
                } else {
                    false
                }
            });
        }
        entries.shrink_to_fit();
        StringMap { entries }
    }
}

/// Borrowing iterator over a [`StringMap`], in key order.
#[derive(Clone)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (String, String)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a String);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a StringMap {
    type Item = (&'a String, &'a String);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for StringMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl FromIterator<(String, String)> for StringMap {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> StringMap {
        StringMap::from_entries(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for StringMap {
    fn from(entries: [(String, String); N]) -> StringMap {
        StringMap::from_entries(entries.into())
    }
}

impl fmt::Debug for StringMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for StringMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StringMap, D::Error> {
        struct MapVisitor;

        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StringMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StringMap, A::Error> {
                // The hint comes from the input; a hostile length must not size the
                // allocation (bincode's own limit bounds what is actually read).
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry::<String, String>()? {
                    entries.push(entry);
                }
                Ok(StringMap::from_entries(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pairs(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn entries_in_any_order_end_sorted_and_the_last_value_of_a_key_wins() {
        let input = pairs(&[("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("a", "5")]);
        let ours: StringMap = input.clone().into_iter().collect();
        let theirs: BTreeMap<String, String> = input.into_iter().collect();
        assert_eq!(
            ours.iter().collect::<Vec<_>>(),
            theirs.iter().collect::<Vec<_>>()
        );
        assert_eq!(ours.get("a").map(String::as_str), Some("5"));
        assert_eq!(ours.get("z"), None);
        assert_eq!(ours.len(), 3);
    }

    #[test]
    fn insert_keeps_the_order_and_reports_the_old_value() {
        let mut map = StringMap::new();
        assert_eq!(map.insert("m".into(), "1".into()), None);
        assert_eq!(map.insert("a".into(), "2".into()), None);
        assert_eq!(map.insert("z".into(), "3".into()), None);
        assert_eq!(map.insert("m".into(), "4".into()), Some("1".into()));
        let entries: Vec<(&str, &str)> =
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(entries, [("a", "2"), ("m", "4"), ("z", "3")]);
    }

    #[test]
    fn includes_needs_every_pair_of_the_selector_with_its_value() {
        let labels: StringMap = pairs(&[("team", "shop"), ("version", "v1")])
            .into_iter()
            .collect();
        let select =
            |entries: &[(&str, &str)]| -> StringMap { pairs(entries).into_iter().collect() };
        assert!(labels.includes(&StringMap::new()));
        assert!(labels.includes(&select(&[("version", "v1")])));
        assert!(labels.includes(&labels));
        assert!(!labels.includes(&select(&[("version", "v2")])));
        assert!(!labels.includes(&select(&[("team", "shop"), ("zone", "a")])));
    }

    #[test]
    fn encodes_exactly_as_a_btree_map_in_bincode_and_json() {
        let entries = pairs(&[("team", "shop"), ("owner", "x <x@example.com>"), ("v", "")]);
        let ours: StringMap = entries.clone().into_iter().collect();
        let theirs: BTreeMap<String, String> = entries.into_iter().collect();
        let ours_bin = crate::raft::codec::encode(&ours).unwrap();
        assert_eq!(ours_bin, crate::raft::codec::encode(&theirs).unwrap());
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
        let back: StringMap = crate::raft::codec::decode(&ours_bin).unwrap();
        assert_eq!(back, ours);
        let from_json: StringMap =
            serde_json::from_str(r#"{"b": "1", "a": "2", "b": "3"}"#).unwrap();
        assert_eq!(
            from_json,
            StringMap::from([("a".into(), "2".into()), ("b".into(), "3".into())])
        );
        assert!(serde_json::from_str::<StringMap>(r#"{"a": 1}"#).is_err());
        assert_eq!(StringMap::new().iter().count(), 0);
    }
}
