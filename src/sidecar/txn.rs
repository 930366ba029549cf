//! Transactions: which broker holds each half message, so END_TRANSACTION (and the broker's
//! CHECK_TRANSACTION_STATE answered by the producer) reaches the broker that stored it.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use rocketmesh_filters::codec::headers::EndTransactionRequestHeader;
use rocketmesh_filters::codec::message::decode_offset_msg_id;
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;

/// Most half messages remembered (a check comes within the broker's check interval).
const MAX_TXN: usize = 65_536;

/// Message id -> broker address of recent half messages (bounded; oldest forgotten first).
#[derive(Debug, Default)]
pub struct Transactions {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl Transactions {
    pub fn remember(&self, msg_id: &str, addr: &str) {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        if map.insert(msg_id.to_owned(), addr.to_owned()).is_none() {
            order.push_back(msg_id.to_owned());
            while order.len() > MAX_TXN {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    pub fn lookup(&self, msg_id: &str) -> Option<String> {
        self.inner.lock().0.get(msg_id).cloned()
    }

    /// END_TRANSACTION (37): to the broker that stored the half message.
    pub async fn end_transaction(
        &self,
        ctx: &Context,
        req: RemotingCommand,
    ) -> Result<RemotingCommand, SidecarError> {
        let h: EndTransactionRequestHeader = req.decode_header()?;
        // Remembered from the send (SDKs put the message's unique id in msgId) or from the
        // broker's check, else read from an offset message id.
        let addr = match self.lookup(&h.msg_id) {
            Some(a) => a,
            None => decode_offset_msg_id(&h.msg_id)
                .map_err(|_| {
                    SidecarError::Transaction(format!(
                        "msgId {:?} names no half message sent through this sidecar",
                        h.msg_id
                    ))
                })?
                .0
                .to_string(),
        };
        // Only brokers we already talk to (the one that stored the half message is pooled).
        if !ctx.upstreams.endpoints().contains(&addr) {
            return Err(SidecarError::Transaction(format!(
                "broker {addr} of msgId is not an upstream"
            )));
        }
        ctx.forward(&addr, None, req, ctx.cfg.request_timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_number() {
        let t = Transactions::default();
        for i in 0..MAX_TXN + 10 {
            t.remember(&format!("m{i}"), "127.0.0.1:1");
        }
        assert_eq!(t.lookup("m0"), None);
        assert_eq!(
            t.lookup(&format!("m{}", MAX_TXN + 9)).as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(t.inner.lock().0.len(), MAX_TXN);
    }
}
