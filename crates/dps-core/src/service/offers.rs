//! Offers stored once (docs/performance.md, "Offers stored once"): a registration record names
//! its connection's ClientHello offer by id, and the offer is stored on its own, once for every
//! device that offered the same. Readers that look inside the facts (the service API's
//! registration view, the readiness report) get them whole again through [`Services::whole_facts`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use super::Services;
use crate::error::Result;
use crate::model::RegistrationRecord;
use crate::tls::StoredOffer;

/// Offers this node has written or read, by id. Bounded in entries and bytes: forgotten
/// wholesale when full (a fleet has a handful of TLS stacks; only a flood of distinct
/// ClientHellos fills it, and then the cost is a store read or an idempotent write per
/// registration, as without the cache).
#[derive(Debug, Default)]
pub(crate) struct OfferCache(Mutex<Offers>);

#[derive(Debug, Default)]
struct Offers {
    known: HashMap<String, Known>,
    /// The bytes of the texts in `known`.
    bytes: usize,
    /// Offers found missing from the store (or not matching their id), and when: logged once,
    /// and not looked for again before [`RECHECK`] (a readiness report over a million records
    /// naming one lost offer reads the store for it once).
    missing: HashMap<String, SystemTime>,
}

#[derive(Debug)]
struct Known {
    /// The offer's text. An id is its text's hash, so this never goes stale.
    json: Arc<str>,
    /// When the store was last seen to hold it. A database restored from a backup, or a replica
    /// promoted before it had every write, may have lost an offer this node wrote: after
    /// [`RECHECK`] the next registration that names it writes it again (a no-op if it is there).
    stored_at: SystemTime,
}

const MAX_OFFERS: usize = 1024;
const MAX_BYTES: usize = 4 << 20;
const RECHECK: Duration = Duration::from_secs(600);

impl OfferCache {
    fn lock(&self) -> MutexGuard<'_, Offers> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn text(&self, id: &str) -> Option<Arc<str>> {
        self.lock().known.get(id).map(|k| k.json.clone())
    }

    fn stored_recently(&self, id: &str, now: SystemTime) -> bool {
        self.lock().known.get(id).is_some_and(|k| now.duration_since(k.stored_at).is_ok_and(|age| age < RECHECK))
    }

    fn remember(&self, id: &str, json: Arc<str>, now: SystemTime) {
        let mut o = self.lock();
        o.missing.remove(id);
        if let Some(old) = o.known.remove(id) {
            o.bytes -= old.json.len();
        }
        if o.known.len() >= MAX_OFFERS || o.bytes + json.len() > MAX_BYTES {
            o.known.clear();
            o.bytes = 0;
        }
        o.bytes += json.len();
        o.known.insert(id.to_owned(), Known { json, stored_at: now });
    }

    /// Whether offer `id` was found missing less than [`RECHECK`] ago.
    fn missing_recently(&self, id: &str, now: SystemTime) -> bool {
        self.lock().missing.get(id).is_some_and(|at| now.duration_since(*at).is_ok_and(|age| age < RECHECK))
    }

    /// Notes offer `id` as missing; true if it was not noted already (then it is logged).
    fn note_missing(&self, id: &str, now: SystemTime) -> bool {
        let mut o = self.lock();
        if o.missing.len() >= MAX_OFFERS && !o.missing.contains_key(id) {
            o.missing.clear();
        }
        o.missing.insert(id.to_owned(), now).is_none()
    }
}

impl Services {
    /// Makes sure the store holds `offer` before a record names it: one idempotent write per
    /// distinct offer and node every [`RECHECK`], nothing for the rest.
    pub(crate) async fn keep_offer(&self, offer: &StoredOffer) -> Result<()> {
        let now = self.clock.now();
        if self.offers.stored_recently(&offer.id, now) {
            return Ok(());
        }
        self.store.put_offer(offer).await?;
        self.offers.remember(&offer.id, Arc::from(offer.json.as_str()), now);
        Ok(())
    }

    /// `record` with its TLS facts whole: the offer they name put back in place of its id. A
    /// record that holds its offer (written before offers were stored once) is returned as it
    /// is. One whose offer the store does not hold (a database restored from a backup older
    /// than the record) reads `"offered": null`, as when no offer was captured, and the offer is
    /// logged as missing once. A store that cannot be read fails the read, as it fails the
    /// record's own.
    pub(crate) async fn whole_facts(&self, mut record: RegistrationRecord) -> Result<RegistrationRecord> {
        let Some(id) = record.tls.as_ref().and_then(crate::tls::StoredFacts::offer_ref) else {
            return Ok(record);
        };
        let now = self.clock.now();
        let json = match self.offers.text(&id) {
            Some(json) => Some(json),
            None if self.offers.missing_recently(&id, now) => None,
            // Only a text that is the id's goes in: a store that lost or damaged an offer
            // makes the record read as one without, never with another offer.
            None => match self.store.offer(&id).await? {
                Some(json) if StoredOffer::id_of(&json) == id => {
                    let json: Arc<str> = Arc::from(json);
                    self.offers.remember(&id, json.clone(), now);
                    Some(json)
                }
                found => {
                    if self.offers.note_missing(&id, now) {
                        tracing::warn!(
                            registration_id = %record.state.registration_id,
                            offer = %id,
                            damaged = found.is_some(),
                            "a TLS offer registrations name is not in the store; they read as without one (logged once per offer)"
                        );
                    }
                    None
                }
            },
        };
        record.tls = record.tls.map(|facts| match &json {
            Some(json) => facts.with_offer(json),
            None => facts.without_offer(),
        });
        Ok(record)
    }
}
