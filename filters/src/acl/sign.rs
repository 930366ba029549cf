//! Apache RocketMQ's request signature (`AclClientRPCHook` on the client, `PlainAccessValidator`
//! on the broker; the C++ client's `ClientRPCHook` computes the same bytes).
//!
//! The signed content is the values of every ext field except `Signature`, in key order (Java's
//! `TreeMap`; keys are ASCII, so byte order is the same), concatenated, then the body bytes. The
//! signature is `Base64(HmacSHA1(secretKey, content))`, carried in the ext field `Signature`
//! next to `AccessKey` (and `SecurityToken` when the credentials have one), which are themselves
//! part of the content: a client puts them into the ext fields before signing.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::codec::{ExtFields, RemotingCommand};

/// Ext field naming the account.
pub const ACCESS_KEY: &str = "AccessKey";
/// Ext field carrying the signature.
pub const SIGNATURE: &str = "Signature";
/// Ext field carrying an optional security token (signed like any other field).
pub const SECURITY_TOKEN: &str = "SecurityToken";

/// Longest `Signature` value looked at (a Base64 SHA-1 MAC is 28 characters).
const MAX_SIGNATURE_LEN: usize = 64;

type HmacSha1 = Hmac<Sha1>;

/// An account's keys. `Debug` never shows the secret key or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub security_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn mac(secret: &str, ext: &ExtFields, body: &[u8]) -> HmacSha1 {
    // HMAC takes keys of any length (an empty secret included), so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    let mut fields: Vec<(&str, &str)> = ext.iter().filter(|(k, _)| *k != SIGNATURE).collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (_, value) in fields {
        mac.update(value.as_bytes());
    }
    mac.update(body);
    mac
}

/// `Base64(HmacSHA1(secret, content))` of a request's ext fields and body.
pub fn signature(secret: &str, ext: &ExtFields, body: &[u8]) -> String {
    STANDARD.encode(mac(secret, ext, body).finalize().into_bytes())
}

/// Signs `cmd` with `creds`, replacing whatever `AccessKey`, `SecurityToken` and `Signature` it
/// carried. Call it last, after every rewrite of the ext fields and body.
pub fn sign(cmd: &mut RemotingCommand, creds: &Credentials) {
    let body = cmd.body().clone();
    let ext = cmd.ext_mut();
    ext.remove(SIGNATURE);
    ext.insert(ACCESS_KEY, &creds.access_key);
    match &creds.security_token {
        Some(token) => {
            ext.insert(SECURITY_TOKEN, token);
        }
        None => {
            ext.remove(SECURITY_TOKEN);
        }
    }
    let sig = signature(&creds.secret_key, ext, &body);
    ext.insert(SIGNATURE, sig);
}

/// Whether `cmd` carries a valid signature under `secret`, compared in constant time (the MAC
/// crate's `verify_slice`). A missing or malformed `Signature` is not valid.
pub fn verify(cmd: &RemotingCommand, secret: &str) -> bool {
    let ext = cmd.ext();
    let Some(given) = ext.get(SIGNATURE).filter(|s| s.len() <= MAX_SIGNATURE_LEN) else {
        return false;
    };
    let Ok(given) = STANDARD.decode(given.trim()) else {
        return false;
    };
    mac(secret, ext, cmd.body()).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::RemotingCodec;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn decode_hex(hex: &str) -> RemotingCommand {
        let bytes: Vec<u8> = (0..hex.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
            .collect();
        let mut buf = BytesMut::from(&bytes[..]);
        RemotingCodec::default().decode(&mut buf).unwrap().unwrap()
    }

    /// Frames the real C++ SDK (librocketmq in PyPI rocketmq 0.4.4) signed with its default
    /// empty credentials: our signature of each is the one it sent, so the content rules
    /// (which fields, their order, numbers as written, the body) are the SDK's.
    #[test]
    fn cpp_sdk_frames_verify() {
        for name in [
            "cpp_send_message_v1",
            "cpp_pull_message_found",
            "cpp_heartbeat_consumer_pull",
            "cpp_update_consumer_offset_after_consume",
            "cpp_get_route_info_by_topic_ok",
        ] {
            let path = format!(
                "{}/../testdata/frames/cpp-client_vs_rust-server/{name}.req.hex",
                env!("CARGO_MANIFEST_DIR")
            );
            let cmd = decode_hex(&std::fs::read_to_string(&path).unwrap());
            let given = cmd.ext().get(SIGNATURE).unwrap().to_owned();
            assert_eq!(signature("", cmd.ext(), cmd.body()), given, "{name}");
            assert!(verify(&cmd, ""), "{name}");
            assert!(!verify(&cmd, "not-the-secret"), "{name}");
        }
    }

    /// A vector computed independently with Python:
    /// `base64(hmac.new(b"12345678", b"RocketMQ" + b"0" + b"TopicA" + b"hello", sha1))`
    /// over ext {AccessKey: RocketMQ, queueId: 0, topic: TopicA}, body "hello".
    #[test]
    fn python_vector() {
        let creds = Credentials {
            access_key: "RocketMQ".into(),
            secret_key: "12345678".into(),
            security_token: None,
        };
        let mut cmd = RemotingCommand::request(10).with_body(&b"hello"[..]);
        cmd.ext_mut().insert("topic", "TopicA");
        cmd.ext_mut().insert("queueId", "0");
        cmd.ext_mut().insert(SIGNATURE, "stale");
        sign(&mut cmd, &creds);
        assert_eq!(
            cmd.ext().get(SIGNATURE),
            Some("UxXtGjl5hC76qjMD6q7LodOGZi4="),
            "content is the sorted values then the body"
        );
        assert!(verify(&cmd, "12345678"));
        assert!(!verify(&cmd, "1234567"));
    }

    #[test]
    fn sign_replaces_the_applications_keys_and_token() {
        let mut cmd = RemotingCommand::request(11);
        cmd.ext_mut().insert(ACCESS_KEY, "app");
        cmd.ext_mut().insert(SECURITY_TOKEN, "app-token");
        cmd.ext_mut().insert(SIGNATURE, "app-signature");
        cmd.ext_mut().insert("topic", "T");
        let mesh = Credentials {
            access_key: "mesh".into(),
            secret_key: "mesh-secret".into(),
            security_token: None,
        };
        sign(&mut cmd, &mesh);
        assert_eq!(cmd.ext().get(ACCESS_KEY), Some("mesh"));
        assert_eq!(cmd.ext().get(SECURITY_TOKEN), None);
        assert!(verify(&cmd, "mesh-secret"));
        let with_token = Credentials {
            security_token: Some("tok".into()),
            ..mesh
        };
        sign(&mut cmd, &with_token);
        assert_eq!(cmd.ext().get(SECURITY_TOKEN), Some("tok"));
        assert!(verify(&cmd, "mesh-secret"));
        // The token is signed: changing it breaks the signature.
        cmd.ext_mut().insert(SECURITY_TOKEN, "other");
        assert!(!verify(&cmd, "mesh-secret"));
    }

    #[test]
    fn missing_or_garbage_signatures_do_not_verify() {
        let mut cmd = RemotingCommand::request(10);
        assert!(!verify(&cmd, ""));
        cmd.ext_mut().insert(SIGNATURE, "%%%not base64");
        assert!(!verify(&cmd, ""));
        cmd.ext_mut().insert(SIGNATURE, "A".repeat(4096));
        assert!(!verify(&cmd, ""));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            access_key: "ak".into(),
            secret_key: "very-secret".into(),
            security_token: Some("tok-secret".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("ak") && !s.contains("very-secret") && !s.contains("tok-secret"));
    }
}
