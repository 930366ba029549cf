//! Which resources a request needs, after Apache's `PlainAccessResource.parse`: a topic with
//! PUB or SUB, a consumer group with SUB, or the admin flag. Shared by the broker's ACL and the
//! sidecar's authorization policy.
//!
//! Departures from Apache, each a gap there: SEND_BATCH_MESSAGE (320) is checked like a V2
//! send; the Pop family (POP, ACK, BATCH_ACK, CHANGE_INVISIBLETIME), QUERY_CONSUMER_OFFSET and
//! LOCK/UNLOCK_BATCH_MQ need topic SUB and group SUB like a pull; a send to a retry topic
//! `%RETRY%G` needs group G (read from the topic, not from a `group` field SEND_MESSAGE does
//! not have); UNREGISTER_CLIENT of a producer (no consumer group) needs nothing.

use crate::codec::body::{BatchAckMessageRequestBody, HeartbeatData, LockBatchRequestBody};
use crate::codec::codes::request_code as rc;
use crate::codec::pop::RETRY_GROUP_TOPIC_PREFIX;
use crate::codec::RemotingCommand;

/// Dead-letter topics (`%DLQ%G`) belong to their group too.
const DLQ_PREFIX: &str = "%DLQ%";

/// Most resources one request is checked for (a heartbeat lists groups and subscriptions; a
/// batch ack its entries). Past it the request is refused as unparseable.
pub const MAX_RESOURCES: usize = 1024;

/// Request codes that need an admin account (Apache's `Permission.ADMIN_CODE`).
pub const ADMIN_CODES: [i32; 5] = [
    rc::UPDATE_AND_CREATE_TOPIC,
    25,  // UPDATE_BROKER_CONFIG
    215, // DELETE_TOPIC_IN_BROKER
    200, // UPDATE_AND_CREATE_SUBSCRIPTIONGROUP
    207, // DELETE_SUBSCRIPTIONGROUP
];

/// A permission bit set, as Apache's `Permission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm(pub u8);

impl Perm {
    pub const DENY: Perm = Perm(1);
    pub const ANY: Perm = Perm(2);
    pub const PUB: Perm = Perm(4);
    pub const SUB: Perm = Perm(8);

    /// `PUB`, `SUB`, `PUB|SUB`, `SUB|PUB`, `DENY`; anything else (and nothing) is DENY, as in
    /// Apache's `parsePermFromString`.
    pub fn parse(s: Option<&str>) -> Perm {
        match s.map(str::trim) {
            Some("PUB") => Perm::PUB,
            Some("SUB") => Perm::SUB,
            Some("PUB|SUB" | "SUB|PUB") => Perm(Perm::PUB.0 | Perm::SUB.0),
            _ => Perm::DENY,
        }
    }

    /// Whether holding `self` grants `needed` (Apache's `checkPermission`).
    pub fn grants(self, needed: Perm) -> bool {
        if self.0 & Perm::DENY.0 != 0 {
            return false;
        }
        if needed.0 & Perm::ANY.0 != 0 {
            return self.0 & (Perm::PUB.0 | Perm::SUB.0) != 0;
        }
        needed.0 & self.0 != 0
    }

    /// The name as written in `plain_acl.yml`.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "DENY",
            2 => "ANY",
            4 => "PUB",
            8 => "SUB",
            12 => "PUB|SUB",
            _ => "?",
        }
    }
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Topic(String),
    /// A consumer group (its retry topic `%RETRY%G` in Apache's terms).
    Group(String),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Topic(t) => write!(f, "topic {t}"),
            Resource::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The code is one of [`ADMIN_CODES`].
    pub admin: bool,
    pub resources: Vec<(Resource, Perm)>,
}

impl Needs {
    fn topic(&mut self, topic: &str, perm: Perm) {
        if let Some(group) = topic
            .strip_prefix(RETRY_GROUP_TOPIC_PREFIX)
            .or_else(|| topic.strip_prefix(DLQ_PREFIX))
        {
            self.group(group);
        } else if !topic.is_empty() {
            self.push(Resource::Topic(topic.to_owned()), perm);
        }
    }

    /// A topic read by `group`: its pop-retry topics (`%RETRY%G+T`, `%RETRY%G_T`) are the
    /// group's.
    fn topic_of_group(&mut self, topic: &str, group: &str) {
        if topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) && !group.is_empty() {
            self.group(group);
        } else {
            self.topic(topic, Perm::SUB);
        }
    }

    fn group(&mut self, group: &str) {
        if !group.is_empty() {
            self.push(Resource::Group(group.to_owned()), Perm::SUB);
        }
    }

    fn push(&mut self, r: Resource, perm: Perm) {
        if !self
            .resources
            .iter()
            .any(|(have, p)| *have == r && *p == perm)
        {
            self.resources.push((r, perm));
        }
    }
}

/// The resources `cmd` needs; `Err` names what could not be read (the request is refused).
pub fn needs(cmd: &RemotingCommand) -> Result<Needs, String> {
    let ext = cmd.ext();
    let get = |k: &str| ext.get(k).unwrap_or_default();
    let mut n = Needs {
        admin: ADMIN_CODES.contains(&cmd.code()),
        ..Needs::default()
    };
    match cmd.code() {
        rc::SEND_MESSAGE => n.topic(get("topic"), Perm::PUB),
        rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => n.topic(get("b"), Perm::PUB),
        rc::CONSUMER_SEND_MSG_BACK => {
            n.group(get("group"));
            n.topic(get("originTopic"), Perm::PUB);
        }
        rc::PULL_MESSAGE
        | rc::UPDATE_CONSUMER_OFFSET
        | rc::QUERY_CONSUMER_OFFSET
        | rc::POP_MESSAGE
        | rc::ACK_MESSAGE
        | rc::CHANGE_MESSAGE_INVISIBLETIME => {
            let group = get("consumerGroup");
            n.group(group);
            n.topic_of_group(get("topic"), group);
        }
        rc::QUERY_MESSAGE => n.topic(get("topic"), Perm::SUB),
        rc::HEART_BEAT => {
            let hb =
                HeartbeatData::parse(cmd.body()).map_err(|e| format!("heartbeat body: {e}"))?;
            for c in &hb.consumer_data_set {
                n.group(&c.group_name);
                for s in &c.subscription_data_set {
                    n.topic_of_group(&s.topic, &c.group_name);
                }
            }
        }
        rc::UNREGISTER_CLIENT | rc::GET_CONSUMER_LIST_BY_GROUP => n.group(get("consumerGroup")),
        rc::BATCH_ACK_MESSAGE => {
            let body = BatchAckMessageRequestBody::parse(cmd.body())
                .map_err(|e| format!("batch ack body: {e}"))?;
            for a in &body.acks {
                n.group(&a.consumer_group);
                n.topic_of_group(&a.topic, &a.consumer_group);
            }
        }
        rc::LOCK_BATCH_MQ | rc::UNLOCK_BATCH_MQ => {
            let body = LockBatchRequestBody::parse(cmd.body())
                .map_err(|e| format!("lock batch body: {e}"))?;
            n.group(&body.consumer_group);
            for mq in &body.mq_set {
                n.topic_of_group(&mq.topic, &body.consumer_group);
            }
        }
        _ => {}
    }
    if n.resources.len() > MAX_RESOURCES {
        return Err(format!(
            "request names more than {MAX_RESOURCES} topics and groups"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(code: i32, fields: &[(&str, &str)]) -> RemotingCommand {
        let mut r = RemotingCommand::request(code);
        for (k, v) in fields {
            r.ext_mut().insert(k, v);
        }
        r
    }

    fn topic(t: &str, p: Perm) -> (Resource, Perm) {
        (Resource::Topic(t.into()), p)
    }

    fn group(g: &str) -> (Resource, Perm) {
        (Resource::Group(g.into()), Perm::SUB)
    }

    #[test]
    fn perms_parse_and_grant_as_apache() {
        assert_eq!(Perm::parse(Some("PUB")), Perm::PUB);
        assert_eq!(Perm::parse(Some(" SUB|PUB ")), Perm(12));
        assert_eq!(Perm::parse(Some("ALL")), Perm::DENY);
        assert_eq!(Perm::parse(None), Perm::DENY);
        assert!(Perm(12).grants(Perm::PUB) && Perm(12).grants(Perm::SUB));
        assert!(!Perm::SUB.grants(Perm::PUB));
        assert!(!Perm(Perm::DENY.0 | Perm::PUB.0).grants(Perm::PUB));
        assert!(Perm::PUB.grants(Perm::ANY) && !Perm::DENY.grants(Perm::ANY));
    }

    #[test]
    fn sends_need_pub_and_retry_sends_the_group() {
        let n = needs(&req(rc::SEND_MESSAGE, &[("topic", "T")])).unwrap();
        assert_eq!(n.resources, vec![topic("T", Perm::PUB)]);
        let n = needs(&req(rc::SEND_MESSAGE_V2, &[("b", "%RETRY%G")])).unwrap();
        assert_eq!(n.resources, vec![group("G")]);
        let n = needs(&req(rc::SEND_BATCH_MESSAGE, &[("b", "T")])).unwrap();
        assert_eq!(n.resources, vec![topic("T", Perm::PUB)]);
        let n = needs(&req(
            rc::CONSUMER_SEND_MSG_BACK,
            &[("group", "G"), ("originTopic", "T")],
        ))
        .unwrap();
        assert_eq!(n.resources, vec![group("G"), topic("T", Perm::PUB)]);
    }

    #[test]
    fn consumption_needs_topic_and_group() {
        for code in [
            rc::PULL_MESSAGE,
            rc::POP_MESSAGE,
            rc::ACK_MESSAGE,
            rc::UPDATE_CONSUMER_OFFSET,
        ] {
            let n = needs(&req(code, &[("consumerGroup", "G"), ("topic", "T")])).unwrap();
            assert_eq!(n.resources, vec![group("G"), topic("T", Perm::SUB)]);
            assert!(!n.admin);
        }
        // A pop-retry topic is the group's.
        let n = needs(&req(
            rc::ACK_MESSAGE,
            &[("consumerGroup", "G"), ("topic", "%RETRY%G+T")],
        ))
        .unwrap();
        assert_eq!(n.resources, vec![group("G")]);
    }

    #[test]
    fn heartbeat_needs_every_group_and_subscription() {
        let body = br#"{"clientID":"c","consumerDataSet":[{"groupName":"G","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","unitMode":false,"subscriptionDataSet":[{"topic":"T","subString":"*","classFilterMode":false,"tagsSet":[],"codeSet":[],"subVersion":1,"expressionType":"TAG"},{"topic":"%RETRY%G","subString":"*","classFilterMode":false,"tagsSet":[],"codeSet":[],"subVersion":1,"expressionType":"TAG"}]}],"producerDataSet":[{"groupName":"P"}]}"#;
        let n = needs(&RemotingCommand::request(rc::HEART_BEAT).with_body(&body[..])).unwrap();
        assert_eq!(n.resources, vec![group("G"), topic("T", Perm::SUB)]);
        assert!(needs(&RemotingCommand::request(rc::HEART_BEAT).with_body(&b"{"[..])).is_err());
    }

    #[test]
    fn admin_codes_and_free_codes() {
        assert!(
            needs(&req(rc::UPDATE_AND_CREATE_TOPIC, &[("topic", "T")]))
                .unwrap()
                .admin
        );
        let n = needs(&req(rc::GET_ROUTEINFO_BY_TOPIC, &[("topic", "T")])).unwrap();
        assert_eq!(n, Needs::default());
    }
}
