//! Registered contacts as calls read them: a copy of the store's, in memory, so that routing a
//! call to a trunk's PBX never waits on the database.

use std::collections::HashMap;

use voicegate_control::Binding;

/// The bindings as calls read them, by trunk: a copy of the store's, loaded at start and kept
/// in step by the registrar after each store write. Expired ones are skipped when read and
/// forgotten by [`Bindings::purge`].
#[derive(Debug, Default)]
pub struct Bindings {
    by_trunk: HashMap<String, Vec<Binding>>,
}

impl Bindings {
    pub fn load(bindings: Vec<Binding>) -> Self {
        let mut out = Bindings::default();
        for b in bindings {
            out.save(b);
        }
        out
    }

    /// Adds or refreshes a binding (same trunk, AOR and contact).
    pub fn save(&mut self, binding: Binding) {
        let list = self.by_trunk.entry(binding.trunk_sid.clone()).or_default();
        let key = |b: &Binding| (b.aor.clone(), b.contact.clone());
        match list.binary_search_by_key(&key(&binding), key) {
            Ok(i) => list[i] = binding,
            Err(i) => list.insert(i, binding),
        }
    }

    /// Removes one contact of an AOR, or all of them when `contact` is None.
    pub fn remove(&mut self, trunk_sid: &str, aor: &str, contact: Option<&str>) {
        if let Some(list) = self.by_trunk.get_mut(trunk_sid) {
            list.retain(|b| b.aor != aor || contact.is_some_and(|c| c != b.contact));
            if list.is_empty() {
                self.by_trunk.remove(trunk_sid);
            }
        }
    }

    /// The trunk's bindings still valid at `now_secs`, by AOR and contact.
    pub fn live(&self, trunk_sid: &str, now_secs: i64) -> Vec<Binding> {
        self.by_trunk
            .get(trunk_sid)
            .into_iter()
            .flatten()
            .filter(|b| b.expires_at > now_secs)
            .cloned()
            .collect()
    }

    pub fn of_aor(&self, trunk_sid: &str, aor: &str, now_secs: i64) -> Vec<Binding> {
        let mut list = self.live(trunk_sid, now_secs);
        list.retain(|b| b.aor == aor);
        list
    }

    /// Forgets bindings expired at `now_secs`.
    pub fn purge(&mut self, now_secs: i64) {
        self.by_trunk.retain(|_, list| {
            list.retain(|b| b.expires_at > now_secs);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(trunk: &str, aor: &str, contact: &str, expires_at: i64) -> Binding {
        Binding {
            trunk_sid: trunk.into(),
            aor: aor.into(),
            contact: contact.into(),
            source: "udp:203.0.113.5:5060".into(),
            call_id: "c1".into(),
            cseq: 1,
            expires_at,
        }
    }

    fn contacts(list: &[Binding]) -> Vec<&str> {
        list.iter().map(|b| b.contact.as_str()).collect()
    }

    #[test]
    fn bindings_are_saved_refreshed_removed_and_expire_per_trunk() {
        let mut bindings = Bindings::load(vec![
            binding("TR1", "sip:pbx@a", "sip:pbx@10.0.0.6", 2000),
            binding("TR1", "sip:pbx@a", "sip:pbx@10.0.0.5", 1000),
            binding("TR2", "sip:pbx@b", "sip:pbx@10.0.1.5", 2000),
        ]);
        assert_eq!(
            contacts(&bindings.live("TR1", 0)),
            ["sip:pbx@10.0.0.5", "sip:pbx@10.0.0.6"]
        );
        // A refresh replaces, never duplicates.
        bindings.save(binding("TR1", "sip:pbx@a", "sip:pbx@10.0.0.5", 3000));
        assert_eq!(bindings.live("TR1", 0).len(), 2);
        assert_eq!(contacts(&bindings.live("TR1", 2500)), ["sip:pbx@10.0.0.5"]);
        assert_eq!(contacts(&bindings.live("TR2", 0)), ["sip:pbx@10.0.1.5"]);

        bindings.save(binding("TR1", "sip:pbx@other", "sip:x@10.0.0.9", 3000));
        bindings.remove("TR1", "sip:pbx@a", Some("sip:pbx@10.0.0.6"));
        assert_eq!(
            contacts(&bindings.of_aor("TR1", "sip:pbx@a", 0)),
            ["sip:pbx@10.0.0.5"]
        );
        // `Contact: *` takes the AOR's bindings, not the trunk's other AORs'.
        bindings.remove("TR1", "sip:pbx@a", None);
        assert_eq!(contacts(&bindings.live("TR1", 0)), ["sip:x@10.0.0.9"]);

        bindings.purge(2500);
        assert!(bindings.live("TR2", 0).is_empty());
        assert_eq!(bindings.live("TR1", 0).len(), 1);
        bindings.purge(3000);
        assert!(bindings.by_trunk.is_empty(), "{bindings:?}");
    }
}
