//! Renewal: extending held handles before they become visible again, up to the max hold time.

use crate::codec::pop::PopHandle;

use super::handles::HandleAction;
use super::queue::HeldState;
use super::Translator;

impl Translator {
    /// Acks owed that were given up because their handle became visible again (their broker
    /// could not be reached until then), since the translator started.
    pub fn acks_expired(&self) -> u64 {
        self.acks_expired
    }

    /// Handles to extend now (held, not committed, close to visible, within the max hold time).
    /// Handles past the max hold time or already visible again are dropped: the broker
    /// redelivers them to whoever pops next.
    pub fn renewals_due(&mut self, now_ms: i64) -> Vec<HandleAction> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut expired_prefetch = Vec::new();
        for q in self.queues.values_mut() {
            for (o, h) in q.held.iter_mut() {
                let prefetched = match h.state {
                    HeldState::Outstanding => false,
                    HeldState::Prefetched => true,
                    HeldState::Acking | HeldState::SentBack => continue,
                };
                if h.renewing {
                    continue;
                }
                if now_ms >= h.visible_at_ms {
                    if h.committed {
                        // Its ack was owed (and failed): the message comes again.
                        self.acks_expired += 1;
                    }
                    if prefetched {
                        expired_prefetch.push(q.key.clone());
                    } else {
                        expired.push((q.key.clone(), *o));
                    }
                } else if h.visible_at_ms - now_ms <= self.cfg.renew_before_ms
                    && now_ms - h.first_pop_ms < self.cfg.max_hold_ms
                {
                    h.renewing = true;
                    out.push(Self::action(&q.key, *o, h, self.cfg.invisible_time_ms));
                }
            }
        }
        for (k, o) in expired {
            self.remove_held(&k, o);
        }
        // A batch is delivered whole: one of its handles gone drops the rest with it.
        for k in expired_prefetch {
            self.drop_prefetch(&k);
        }
        out
    }

    /// The renewal of `action` finished: `Some((extra_info, pop_time, invisible_time))` of the
    /// new handle, or None when it failed (the handle is then let go). An outcome for a handle
    /// no longer held (its offset may hold another message by now) changes nothing.
    pub fn renewed(&mut self, action: &HandleAction, new: Option<(String, i64, i64)>) {
        let (key, offset) = (&*action.key, action.offset);
        let Some(h) = self
            .queues
            .get_mut(key)
            .and_then(|q| q.held.get_mut(&offset))
            .filter(|h| h.commit_log_offset == action.serial)
        else {
            return;
        };
        h.renewing = false;
        match new.and_then(|(extra, pop, inv)| PopHandle::parse(&extra).ok().map(|p| (p, pop, inv)))
        {
            Some((mut handle, pop_time, invisible)) => {
                handle.pop_time = pop_time;
                handle.invisible_time = invisible;
                h.visible_at_ms = pop_time + invisible;
                h.handle = handle;
            }
            None => match h.state {
                HeldState::Outstanding => {
                    self.remove_held(key, offset);
                }
                HeldState::Prefetched => self.drop_prefetch(key),
                HeldState::Acking | HeldState::SentBack => {}
            },
        }
    }
}
