//! DescribeAcls, CreateAcls and DeleteAcls v0: v1 added resource pattern
//! types, so v0 is v1 without them, every pattern being LITERAL.

use std::sync::Arc;

use anyhow::ensure;
use bytes::Bytes;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::*;

use super::codec::{Reader, Writer};
use super::{malformed, reply};
use crate::api;
use crate::dispatch::HandlerResult;
use crate::server::Broker;

/// PatternType LITERAL: the only kind of resource pattern v0 knows.
const LITERAL: i8 = 3;

fn decode_describe_acls(r: &mut Reader) -> anyhow::Result<DescribeAclsRequest> {
    Ok(mk!(DescribeAclsRequest {
        resource_type_filter: r.i8()?,
        resource_name_filter: r.nullable_string()?,
        pattern_type_filter: LITERAL,
        principal_filter: r.nullable_string()?,
        host_filter: r.nullable_string()?,
        operation: r.i8()?,
        permission_type: r.i8()?
    }))
}

/// A v0 answer can only carry literal patterns (Kafka refuses the others
/// in v0 responses too).
fn literal_only(pattern_type: i8) -> anyhow::Result<()> {
    ensure!(pattern_type == LITERAL, "pattern type {pattern_type} cannot be sent at v0");
    Ok(())
}

fn encode_describe_acls(w: &mut Writer, resp: &DescribeAclsResponse) -> anyhow::Result<()> {
    w.i32(resp.throttle_time_ms);
    w.i16(resp.error_code);
    w.nullable_string(resp.error_message.as_deref())?;
    w.array(&resp.resources, |w, res| {
        literal_only(res.pattern_type)?;
        w.i8(res.resource_type);
        w.string(&res.resource_name)?;
        w.array(&res.acls, |w, a| {
            w.string(&a.principal)?;
            w.string(&a.host)?;
            w.i8(a.operation);
            w.i8(a.permission_type);
            Ok(())
        })
    })
}

pub async fn describe_acls(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let req = decode_describe_acls(&mut Reader::new(body)).map_err(malformed("DescribeAcls", &header))?;
    let resp = api::acl::describe_acls(broker, &header, req).await;
    reply(&header, resp, encode_describe_acls)
}

fn decode_create_acls(r: &mut Reader) -> anyhow::Result<CreateAclsRequest> {
    let creations = r.array(|r| {
        Ok(mk!(AclCreation {
            resource_type: r.i8()?,
            resource_name: r.string()?,
            resource_pattern_type: LITERAL,
            principal: r.string()?,
            host: r.string()?,
            operation: r.i8()?,
            permission_type: r.i8()?
        }))
    })?;
    Ok(mk!(CreateAclsRequest { creations: creations }))
}

/// CreateAclsResponse v0 is laid out as v1 (v1 only changed throttling).
const CREATE_ACLS_RESPONSE_LAYOUT: i16 = 1;

pub async fn create_acls(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let req = decode_create_acls(&mut Reader::new(body)).map_err(malformed("CreateAcls", &header))?;
    let resp = api::acl::create_acls(broker, &header, req).await;
    reply(&header, resp, |w, resp| w.message(resp, CREATE_ACLS_RESPONSE_LAYOUT))
}

fn decode_delete_acls(r: &mut Reader) -> anyhow::Result<DeleteAclsRequest> {
    let filters = r.array(|r| {
        Ok(mk!(DeleteAclsFilter {
            resource_type_filter: r.i8()?,
            resource_name_filter: r.nullable_string()?,
            pattern_type_filter: LITERAL,
            principal_filter: r.nullable_string()?,
            host_filter: r.nullable_string()?,
            operation: r.i8()?,
            permission_type: r.i8()?
        }))
    })?;
    Ok(mk!(DeleteAclsRequest { filters: filters }))
}

fn encode_delete_acls(w: &mut Writer, resp: &DeleteAclsResponse) -> anyhow::Result<()> {
    w.i32(resp.throttle_time_ms);
    w.array(&resp.filter_results, |w, f| {
        w.i16(f.error_code);
        w.nullable_string(f.error_message.as_deref())?;
        w.array(&f.matching_acls, |w, a| {
            literal_only(a.pattern_type)?;
            w.i16(a.error_code);
            w.nullable_string(a.error_message.as_deref())?;
            w.i8(a.resource_type);
            w.string(&a.resource_name)?;
            w.string(&a.principal)?;
            w.string(&a.host)?;
            w.i8(a.operation);
            w.i8(a.permission_type);
            Ok(())
        })
    })
}

pub async fn delete_acls(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let req = decode_delete_acls(&mut Reader::new(body)).map_err(malformed("DeleteAcls", &header))?;
    let resp = api::acl::delete_acls(broker, &header, req).await;
    reply(&header, resp, encode_delete_acls)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_acls_response::AclCreationResult;
    use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
    use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
    use kafka_protocol::protocol::StrBytes;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = StrBytes> {
        ".{0,20}".prop_map(StrBytes::from_string)
    }

    fn nullable_text() -> impl Strategy<Value = Option<StrBytes>> {
        proptest::option::of(text())
    }

    // The other half of each round trip, written from the v0 schemas.

    fn encode_filter(
        w: &mut Writer,
        (kind, name, principal, host, op, perm): (i8, &Option<StrBytes>, &Option<StrBytes>, &Option<StrBytes>, i8, i8),
    ) -> anyhow::Result<()> {
        w.i8(kind);
        w.nullable_string(name.as_deref())?;
        w.nullable_string(principal.as_deref())?;
        w.nullable_string(host.as_deref())?;
        w.i8(op);
        w.i8(perm);
        Ok(())
    }

    fn encode_describe_acls_request(q: &DescribeAclsRequest) -> Bytes {
        let mut w = Writer::bare();
        let f = (
            q.resource_type_filter,
            &q.resource_name_filter,
            &q.principal_filter,
            &q.host_filter,
            q.operation,
            q.permission_type,
        );
        encode_filter(&mut w, f).unwrap();
        w.into_bytes()
    }

    fn decode_describe_acls_response(bytes: Bytes) -> anyhow::Result<DescribeAclsResponse> {
        let mut r = Reader::new(bytes);
        Ok(mk!(DescribeAclsResponse {
            throttle_time_ms: r.i32()?,
            error_code: r.i16()?,
            error_message: r.nullable_string()?,
            resources: r.array(|r| {
                Ok(mk!(DescribeAclsResource {
                    resource_type: r.i8()?,
                    resource_name: r.string()?,
                    pattern_type: LITERAL,
                    acls: r.array(|r| {
                        Ok(mk!(AclDescription {
                            principal: r.string()?,
                            host: r.string()?,
                            operation: r.i8()?,
                            permission_type: r.i8()?
                        }))
                    })?
                }))
            })?
        }))
    }

    fn encode_create_acls_request(q: &CreateAclsRequest) -> Bytes {
        let mut w = Writer::bare();
        w.array(&q.creations, |w, c| {
            w.i8(c.resource_type);
            w.string(&c.resource_name)?;
            w.string(&c.principal)?;
            w.string(&c.host)?;
            w.i8(c.operation);
            w.i8(c.permission_type);
            Ok(())
        })
        .unwrap();
        w.into_bytes()
    }

    fn decode_create_acls_response(bytes: Bytes) -> anyhow::Result<CreateAclsResponse> {
        let mut r = Reader::new(bytes);
        Ok(mk!(CreateAclsResponse {
            throttle_time_ms: r.i32()?,
            results: r.array(|r| {
                Ok(mk!(AclCreationResult { error_code: r.i16()?, error_message: r.nullable_string()? }))
            })?
        }))
    }

    fn encode_delete_acls_request(q: &DeleteAclsRequest) -> Bytes {
        let mut w = Writer::bare();
        w.array(&q.filters, |w, f| {
            encode_filter(
                w,
                (
                    f.resource_type_filter,
                    &f.resource_name_filter,
                    &f.principal_filter,
                    &f.host_filter,
                    f.operation,
                    f.permission_type,
                ),
            )
        })
        .unwrap();
        w.into_bytes()
    }

    fn decode_delete_acls_response(bytes: Bytes) -> anyhow::Result<DeleteAclsResponse> {
        let mut r = Reader::new(bytes);
        Ok(mk!(DeleteAclsResponse {
            throttle_time_ms: r.i32()?,
            filter_results: r.array(|r| {
                Ok(mk!(DeleteAclsFilterResult {
                    error_code: r.i16()?,
                    error_message: r.nullable_string()?,
                    matching_acls: r.array(|r| {
                        Ok(mk!(DeleteAclsMatchingAcl {
                            error_code: r.i16()?,
                            error_message: r.nullable_string()?,
                            resource_type: r.i8()?,
                            resource_name: r.string()?,
                            pattern_type: LITERAL,
                            principal: r.string()?,
                            host: r.string()?,
                            operation: r.i8()?,
                            permission_type: r.i8()?
                        }))
                    })?
                }))
            })?
        }))
    }

    type Filter = (i8, Option<StrBytes>, Option<StrBytes>, Option<StrBytes>, i8, i8);

    fn filter() -> impl Strategy<Value = Filter> {
        (any::<i8>(), nullable_text(), nullable_text(), nullable_text(), any::<i8>(), any::<i8>())
    }

    proptest! {
        #[test]
        fn describe_acls_round_trips(
            (kind, name, principal, host, op, perm) in filter(),
            code in any::<i16>(),
            msg in nullable_text(),
            resources in vec((any::<i8>(), text(), vec((text(), text(), any::<i8>(), any::<i8>()), 0..3)), 0..3),
        ) {
            let req = mk!(DescribeAclsRequest {
                resource_type_filter: kind,
                resource_name_filter: name,
                pattern_type_filter: LITERAL,
                principal_filter: principal,
                host_filter: host,
                operation: op,
                permission_type: perm
            });
            prop_assert_eq!(decode_describe_acls(&mut Reader::new(encode_describe_acls_request(&req))).unwrap(), req);
            let resp = mk!(DescribeAclsResponse {
                error_code: code,
                error_message: msg,
                resources: resources.into_iter().map(|(t, n, acls)| mk!(DescribeAclsResource {
                    resource_type: t,
                    resource_name: n,
                    pattern_type: LITERAL,
                    acls: acls.into_iter().map(|(p, h, o, pt)| mk!(AclDescription {
                        principal: p,
                        host: h,
                        operation: o,
                        permission_type: pt
                    })).collect()
                })).collect()
            });
            let mut w = Writer::bare();
            encode_describe_acls(&mut w, &resp).unwrap();
            prop_assert_eq!(decode_describe_acls_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn create_acls_round_trips(
            creations in vec((any::<i8>(), text(), text(), text(), any::<i8>(), any::<i8>()), 0..4),
            results in vec((any::<i16>(), nullable_text()), 0..4),
        ) {
            let req = mk!(CreateAclsRequest {
                creations: creations.into_iter().map(|(t, n, p, h, o, pt)| mk!(AclCreation {
                    resource_type: t,
                    resource_name: n,
                    resource_pattern_type: LITERAL,
                    principal: p,
                    host: h,
                    operation: o,
                    permission_type: pt
                })).collect()
            });
            prop_assert_eq!(decode_create_acls(&mut Reader::new(encode_create_acls_request(&req))).unwrap(), req);
            let resp = mk!(CreateAclsResponse {
                results: results.into_iter().map(|(c, m)| mk!(AclCreationResult { error_code: c, error_message: m })).collect()
            });
            let mut w = Writer::bare();
            w.message(&resp, CREATE_ACLS_RESPONSE_LAYOUT).unwrap();
            prop_assert_eq!(decode_create_acls_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn delete_acls_round_trips(
            filters in vec(filter(), 0..3),
            results in vec((any::<i16>(), nullable_text(), vec((any::<i16>(), nullable_text(), any::<i8>(), text(), text(), text(), any::<i8>(), any::<i8>()), 0..3)), 0..3),
        ) {
            let req = mk!(DeleteAclsRequest {
                filters: filters.into_iter().map(|(t, n, p, h, o, pt)| mk!(DeleteAclsFilter {
                    resource_type_filter: t,
                    resource_name_filter: n,
                    pattern_type_filter: LITERAL,
                    principal_filter: p,
                    host_filter: h,
                    operation: o,
                    permission_type: pt
                })).collect()
            });
            prop_assert_eq!(decode_delete_acls(&mut Reader::new(encode_delete_acls_request(&req))).unwrap(), req);
            let resp = mk!(DeleteAclsResponse {
                filter_results: results.into_iter().map(|(c, m, acls)| mk!(DeleteAclsFilterResult {
                    error_code: c,
                    error_message: m,
                    matching_acls: acls.into_iter().map(|(c, m, t, n, p, h, o, pt)| mk!(DeleteAclsMatchingAcl {
                        error_code: c,
                        error_message: m,
                        resource_type: t,
                        resource_name: n,
                        pattern_type: LITERAL,
                        principal: p,
                        host: h,
                        operation: o,
                        permission_type: pt
                    })).collect()
                })).collect()
            });
            let mut w = Writer::bare();
            encode_delete_acls(&mut w, &resp).unwrap();
            prop_assert_eq!(decode_delete_acls_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn decoders_never_panic(bytes in vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = decode_describe_acls(&mut Reader::new(b.clone()));
            let _ = decode_create_acls(&mut Reader::new(b.clone()));
            let _ = decode_delete_acls(&mut Reader::new(b));
        }
    }

    #[test]
    fn non_literal_patterns_are_not_sent_at_v0() {
        let mut resp = DescribeAclsResponse::default();
        resp.resources = vec![mk!(DescribeAclsResource { pattern_type: 4 })];
        assert!(encode_describe_acls(&mut Writer::bare(), &resp).is_err());
    }
}
