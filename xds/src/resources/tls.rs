//! A cluster's `transport_socket`: Envoy's `envoy.transport_sockets.tls` with a typed
//! `UpstreamTlsContext`, in the file-based shape Istio uses. xds-api carries the messages of
//! `tls/v3/common.proto` (TlsCertificate, CertificateValidationContext) but not those of
//! `tls.proto`, so `UpstreamTlsContext`, `CommonTlsContext` and
//! `CombinedCertificateValidationContext` are declared here with prost, with the fields we read
//! (Envoy's field numbers); unknown fields are skipped by the decoder as usual.

use prost::Message;
use rocketmesh_remoting::tls::{SanKind, SanMatcher, StringMatch};
use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as pb_tls;
use xds_api::pb::envoy::r#type::matcher::v3 as pb_matcher;
use xds_api::pb::google::protobuf as pb;

use crate::model::UpstreamTls;

/// The transport socket's name.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
/// The typed config's type URL.
pub const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

#[derive(Clone, PartialEq, Message)]
pub struct UpstreamTlsContext {
    #[prost(message, optional, tag = "1")]
    pub common_tls_context: Option<CommonTlsContext>,
    #[prost(string, tag = "2")]
    pub sni: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct CommonTlsContext {
    #[prost(message, repeated, tag = "2")]
    pub tls_certificates: Vec<pb_tls::TlsCertificate>,
    #[prost(message, optional, tag = "3")]
    pub validation_context: Option<pb_tls::CertificateValidationContext>,
    #[prost(string, repeated, tag = "4")]
    pub alpn_protocols: Vec<String>,
    #[prost(message, optional, tag = "7")]
    pub validation_context_sds_secret_config: Option<pb_tls::SdsSecretConfig>,
    #[prost(message, optional, tag = "8")]
    pub combined_validation_context: Option<CombinedCertificateValidationContext>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CombinedCertificateValidationContext {
    #[prost(message, optional, tag = "1")]
    pub default_validation_context: Option<pb_tls::CertificateValidationContext>,
    #[prost(message, optional, tag = "2")]
    pub validation_context_sds_secret_config: Option<pb_tls::SdsSecretConfig>,
}

fn filename(path: &str) -> Option<pb_core::DataSource> {
    Some(pb_core::DataSource {
        specifier: Some(pb_core::data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    })
}

fn string_matcher(m: &StringMatch) -> pb_matcher::StringMatcher {
    use pb_matcher::string_matcher::MatchPattern;
    let pattern = match m {
        StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        StringMatch::Suffix(v) => MatchPattern::Suffix(v.clone()),
        StringMatch::Contains(v) => MatchPattern::Contains(v.clone()),
    };
    pb_matcher::StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

/// The cluster's `transport_socket` for `tls`.
pub fn transport_socket(tls: &UpstreamTls) -> pb_core::TransportSocket {
    use pb_tls::subject_alt_name_matcher::SanType;
    let mut typed = Vec::new();
    let mut untyped = Vec::new();
    for id in &tls.identities {
        let san_type = match id.kind {
            SanKind::Dns => SanType::Dns,
            SanKind::Uri => SanType::Uri,
            SanKind::Ip => SanType::IpAddress,
            SanKind::Any => {
                untyped.push(string_matcher(&id.matcher));
                continue;
            }
        };
        typed.push(pb_tls::SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(string_matcher(&id.matcher)),
        });
    }
    #[allow(deprecated)]
    let validation = pb_tls::CertificateValidationContext {
        trusted_ca: filename(&tls.ca_file),
        match_typed_subject_alt_names: typed,
        match_subject_alt_names: untyped,
        ..Default::default()
    };
    let certificates = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => vec![pb_tls::TlsCertificate {
            certificate_chain: filename(c),
            private_key: filename(k),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: certificates,
            validation_context: Some(validation),
            ..Default::default()
        }),
        sni: tls.sni.clone().unwrap_or_default(),
    };
    pb_core::TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(pb_core::transport_socket::ConfigType::TypedConfig(
            pb::Any {
                type_url: UPSTREAM_TLS_CONTEXT.into(),
                value: ctx.encode_to_vec(),
            },
        )),
    }
}

fn file_of(what: &str, source: Option<&pb_core::DataSource>) -> Result<String, String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(pb_core::data_source::Specifier::Filename(f)) if !f.is_empty() => Ok(f.clone()),
        Some(_) => Err(format!(
            "{what}: only a filename is supported (no inline or environment data)"
        )),
        None => Err(format!("{what} is missing")),
    }
}

fn matcher_of(m: &pb_matcher::StringMatcher) -> Result<StringMatch, String> {
    use pb_matcher::string_matcher::MatchPattern;
    if m.ignore_case {
        return Err("ignore_case SAN matchers are not supported".into());
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchPattern::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchPattern::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchPattern::Contains(v)) => Ok(StringMatch::Contains(v.clone())),
        _ => Err("only exact, prefix, suffix and contains SAN matchers are supported".into()),
    }
}

/// The cluster's TLS from its `transport_socket` (None: absent, or not TLS: plaintext).
pub fn upstream_tls_of(
    socket: Option<&pb_core::TransportSocket>,
) -> Result<Option<UpstreamTls>, String> {
    use pb_tls::subject_alt_name_matcher::SanType;
    let Some(socket) = socket else {
        return Ok(None);
    };
    let any = match &socket.config_type {
        Some(pb_core::transport_socket::ConfigType::TypedConfig(any)) => any,
        None if socket.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => {
            return Err(format!(
                "transport socket {:?} without a config",
                socket.name
            ))
        }
    };
    if any.type_url != UPSTREAM_TLS_CONTEXT {
        if any.type_url.ends_with(".RawBuffer") {
            return Ok(None);
        }
        return Err(format!(
            "unsupported transport socket type {}",
            any.type_url
        ));
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("UpstreamTlsContext: {e}"))?;
    let common = ctx.common_tls_context.unwrap_or_default();
    let validation = match (
        common.validation_context,
        common.combined_validation_context,
    ) {
        (Some(v), _) => v,
        (None, Some(c)) => c.default_validation_context.unwrap_or_default(),
        (None, None) => {
            // Envoy would not verify the server at all: refused rather than silently trusted.
            return Err("UpstreamTlsContext without a validation context (trusted_ca)".into());
        }
    };
    let ca_file = file_of(
        "validation_context.trusted_ca",
        validation.trusted_ca.as_ref(),
    )?;
    let mut identities = Vec::new();
    for m in &validation.match_typed_subject_alt_names {
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Uri) => SanKind::Uri,
            Ok(SanType::IpAddress) => SanKind::Ip,
            _ => return Err(format!("SAN type {} is not supported", m.san_type)),
        };
        let matcher = matcher_of(
            m.matcher
                .as_ref()
                .ok_or("a SAN matcher without a matcher")?,
        )?;
        identities.push(SanMatcher { kind, matcher });
    }
    #[allow(deprecated)]
    for m in &validation.match_subject_alt_names {
        identities.push(SanMatcher {
            kind: SanKind::Any,
            matcher: matcher_of(m)?,
        });
    }
    let (cert_file, key_file) = match common.tls_certificates.as_slice() {
        [] => (None, None),
        [c] => (
            Some(file_of(
                "tls_certificates[0].certificate_chain",
                c.certificate_chain.as_ref(),
            )?),
            Some(file_of(
                "tls_certificates[0].private_key",
                c.private_key.as_ref(),
            )?),
        ),
        _ => return Err("more than one client certificate".into()),
    };
    Ok(Some(UpstreamTls {
        ca_file,
        cert_file,
        key_file,
        sni: (!ctx.sni.is_empty()).then_some(ctx.sni),
        identities,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterSpec, EndpointSource, SubsetFallback};
    use crate::resources::{cluster_from_proto, cluster_to_proto};

    fn spec(tls: Option<UpstreamTls>) -> ClusterSpec {
        ClusterSpec {
            name: "rocketmq.topic.T".into(),
            endpoints: EndpointSource::Inline(vec![]),
            subset_selectors: vec![],
            fallback: SubsetFallback::NoFallback,
            connect_timeout_ms: None,
            tls,
        }
    }

    #[test]
    fn upstream_tls_round_trips_through_the_cluster_proto() {
        let tls = UpstreamTls {
            ca_file: "/etc/certs/root-cert.pem".into(),
            cert_file: Some("/etc/certs/cert-chain.pem".into()),
            key_file: Some("/etc/certs/key.pem".into()),
            sni: Some("outbound_.10911_._.broker.mq.svc.cluster.local".into()),
            identities: vec![
                "spiffe://cluster.local/ns/mq/sa/broker".parse().unwrap(),
                SanMatcher {
                    kind: SanKind::Any,
                    matcher: StringMatch::Suffix(".mq.svc".into()),
                },
            ],
        };
        let proto = cluster_to_proto(&spec(Some(tls.clone())));
        let socket = proto.transport_socket.as_ref().unwrap();
        assert_eq!(socket.name, TLS_SOCKET);
        assert_eq!(cluster_from_proto(&proto).unwrap().tls, Some(tls));
        // Plaintext clusters carry no transport socket, and their content version is unchanged
        // by the new field.
        let plain = cluster_to_proto(&spec(None));
        assert!(plain.transport_socket.is_none());
        assert!(!serde_json::to_string(&spec(None)).unwrap().contains("tls"));
    }

    /// Istio's shape: the CA and SAN matchers in `combined_validation_context`.
    #[test]
    fn istio_shaped_contexts_are_read_and_bad_ones_refused() {
        use pb_tls::subject_alt_name_matcher::SanType;
        let validation = pb_tls::CertificateValidationContext {
            trusted_ca: filename("/var/run/secrets/root-cert.pem"),
            match_typed_subject_alt_names: vec![pb_tls::SubjectAltNameMatcher {
                san_type: SanType::Uri as i32,
                matcher: Some(string_matcher(&StringMatch::Exact(
                    "spiffe://cluster.local/ns/mq/sa/broker".into(),
                ))),
            }],
            ..Default::default()
        };
        let ctx = |validation: Option<pb_tls::CertificateValidationContext>| UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                combined_validation_context: Some(CombinedCertificateValidationContext {
                    default_validation_context: validation,
                    ..Default::default()
                }),
                alpn_protocols: vec!["istio".into()],
                ..Default::default()
            }),
            sni: "outbound_.10911_._.broker".into(),
        };
        let socket = |ctx: UpstreamTlsContext| pb_core::TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(pb_core::transport_socket::ConfigType::TypedConfig(
                pb::Any {
                    type_url: UPSTREAM_TLS_CONTEXT.into(),
                    value: ctx.encode_to_vec(),
                },
            )),
        };
        let tls = upstream_tls_of(Some(&socket(ctx(Some(validation.clone())))))
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_file, "/var/run/secrets/root-cert.pem");
        assert_eq!(tls.identities[0].kind, SanKind::Uri);
        assert_eq!(tls.sni.as_deref(), Some("outbound_.10911_._.broker"));
        // Inline CA data, or no validation at all: refused with a reason.
        let mut inline = validation;
        inline.trusted_ca = Some(pb_core::DataSource {
            specifier: Some(pb_core::data_source::Specifier::InlineString("x".into())),
            ..Default::default()
        });
        let e = upstream_tls_of(Some(&socket(ctx(Some(inline))))).unwrap_err();
        assert!(e.contains("filename"), "{e}");
        let mut none = ctx(None);
        none.common_tls_context = Some(CommonTlsContext::default());
        assert!(upstream_tls_of(Some(&socket(none))).is_err());
    }
}
