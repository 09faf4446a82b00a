//! Bodies of the Raft RPCs on the node transport. Everything is postcard except the entries'
//! batch bytes and snapshot data, which follow their metadata raw and are sliced without a copy on
//! the receiving side.

use bytes::{BufMut, Bytes};
use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::{BasicNode, EntryPayload, Membership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{BatchData, NodeId, TypeConfig};

/// The `rpc` byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Rpc {
    AppendEntries = 1,
    Vote = 2,
    PreVote = 3,
    FullSnapshot = 4,
    TransferLeader = 5,
    /// Whether the replica is recovering a lost log (`recovery`); an empty request, a `bool`
    /// answer. A leader asks before it makes a joining replica a voter (`reassign`).
    Recovering = 6,
}

impl TryFrom<u8> for Rpc {
    type Error = CodecError;
    fn try_from(v: u8) -> Result<Self, CodecError> {
        Ok(match v {
            1 => Rpc::AppendEntries,
            2 => Rpc::Vote,
            3 => Rpc::PreVote,
            4 => Rpc::FullSnapshot,
            5 => Rpc::TransferLeader,
            6 => Rpc::Recovering,
            other => return Err(CodecError::UnknownRpc(other)),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown rpc {0}")]
    UnknownRpc(u8),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("{0}")]
    Remote(RemoteFailure),
}

/// Why a peer could not answer a request, sent in place of a response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteFailure {
    /// The group does not exist on the peer (yet, or any more).
    #[error("group {0} is not on the peer")]
    UnknownGroup(u64),
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
    #[error("raft error on the peer: {0}")]
    Raft(String),
}

fn malformed(e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed(e.to_string())
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct AppendMeta {
    vote: VoteOf<TypeConfig>,
    prev_log_id: Option<LogIdOf<TypeConfig>>,
    leader_commit: Option<LogIdOf<TypeConfig>>,
    entries: Vec<EntryMeta>,
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct EntryMeta {
    log_id: LogIdOf<TypeConfig>,
    payload: PayloadMeta,
}

#[derive(Serialize, Deserialize)]
enum PayloadMeta {
    Blank,
    /// The batch bytes follow the metadata, in entry order.
    Normal {
        len: u32,
    },
    Membership(Membership<NodeId, BasicNode>),
}

/// An encoded body: a length-prefixed metadata part, then raw pieces shared with the request.
pub struct Body {
    pub meta: Vec<u8>,
    pub raw: Vec<Bytes>,
}

impl Body {
    /// The body's pieces in order, sharing the raw parts' buffers.
    pub fn into_pieces(self) -> Vec<Bytes> {
        let mut v = Vec::with_capacity(1 + self.raw.len());
        v.push(Bytes::from(self.meta));
        v.extend(self.raw);
        v
    }
}

fn meta_with_len<T: Serialize>(meta: &T) -> Result<Vec<u8>, CodecError> {
    let encoded = postcard::to_stdvec(meta).map_err(malformed)?;
    let mut out = Vec::with_capacity(4 + encoded.len());
    out.put_u32(encoded.len() as u32);
    out.extend_from_slice(&encoded);
    Ok(out)
}

/// Splits a body into its decoded metadata and the raw bytes after it.
fn split_meta<T: DeserializeOwned>(mut body: Bytes) -> Result<(T, Bytes), CodecError> {
    if body.len() < 4 {
        return Err(malformed("body shorter than its metadata length"));
    }
    let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if body.len() - 4 < len {
        return Err(malformed(format!("metadata of {len} bytes in a body of {}", body.len())));
    }
    let meta = postcard::from_bytes(&body[4..4 + len]).map_err(malformed)?;
    let rest = body.split_off(4 + len);
    Ok((meta, rest))
}

pub fn encode_append(req: &AppendEntriesRequest<TypeConfig>) -> Result<Body, CodecError> {
    let mut raw = Vec::new();
    let mut entries = Vec::with_capacity(req.entries.len());
    for e in &req.entries {
        let payload = match &e.payload {
            EntryPayload::Blank => PayloadMeta::Blank,
            EntryPayload::Normal(BatchData(b)) => {
                let len = u32::try_from(b.len()).map_err(malformed)?;
                raw.push(b.clone());
                PayloadMeta::Normal { len }
            }
            EntryPayload::Membership(m) => PayloadMeta::Membership(m.clone()),
        };
        entries.push(EntryMeta { log_id: e.log_id, payload });
    }
    let meta = meta_with_len(&AppendMeta {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
        entries,
    })?;
    Ok(Body { meta, raw })
}

pub fn decode_append(body: Bytes) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    let (meta, mut rest): (AppendMeta, Bytes) = split_meta(body)?;
    let mut entries = Vec::with_capacity(meta.entries.len());
    for e in meta.entries {
        let payload = match e.payload {
            PayloadMeta::Blank => EntryPayload::Blank,
            PayloadMeta::Normal { len } => {
                let len = len as usize;
                if rest.len() < len {
                    return Err(malformed("entry payload runs past the body"));
                }
                EntryPayload::Normal(BatchData(rest.split_to(len)))
            }
            PayloadMeta::Membership(m) => EntryPayload::Membership(m),
        };
        entries.push(openraft::Entry { log_id: e.log_id, payload });
    }
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after the last entry", rest.len())));
    }
    Ok(AppendEntriesRequest {
        vote: meta.vote,
        prev_log_id: meta.prev_log_id,
        entries,
        leader_commit: meta.leader_commit,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotHead {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
}

pub fn encode_snapshot(
    vote: &VoteOf<TypeConfig>,
    meta: &SnapshotMetaOf<TypeConfig>,
    data: Bytes,
) -> Result<Body, CodecError> {
    let meta = meta_with_len(&SnapshotHead { vote: *vote, meta: meta.clone() })?;
    Ok(Body { meta, raw: vec![data] })
}

pub fn decode_snapshot(body: Bytes) -> Result<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Bytes), CodecError> {
    let (head, data): (SnapshotHead, Bytes) = split_meta(body)?;
    Ok((head.vote, head.meta, data))
}

/// Encodes a small message (votes, responses) whole.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(msg).map_err(malformed)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(body).map_err(malformed)
}

/// A response body: a status byte, then the answer or the failure.
pub fn encode_response<T: Serialize>(answer: Result<&T, &RemoteFailure>) -> Bytes {
    let mut out = Vec::new();
    let encoded = match answer {
        Ok(t) => {
            out.push(0);
            postcard::to_stdvec(t).map_err(|e| RemoteFailure::Raft(format!("encode: {e}")))
        }
        Err(f) => Err(f.clone()),
    };
    match encoded {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(f) => {
            out.clear();
            out.push(1);
            // A failure is a small enum of strings; postcard cannot fail on it.
            out.extend_from_slice(&postcard::to_stdvec(&f).unwrap_or_default());
        }
    }
    Bytes::from(out)
}

pub fn decode_response<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    match body.split_first() {
        Some((0, rest)) => decode(rest),
        Some((1, rest)) => Err(CodecError::Remote(decode(rest)?)),
        Some((status, _)) => Err(malformed(format!("unknown response status {status}"))),
        None => Err(malformed("empty response")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_std::LeaderId;
    use openraft::vote::RaftLeaderId;
    use proptest::prelude::*;

    fn log_id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        openraft::LogId::new(LeaderId::<u64, NodeId>::new(term, 1).to_committed(), index)
    }

    fn join(body: Body) -> Bytes {
        Bytes::from(body.into_pieces().concat())
    }

    proptest! {
        /// AppendEntries survives the codec, and each batch comes back as a slice of the body.
        #[test]
        fn append_entries_round_trip(
            term in 1u64..1000,
            payloads in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)), 0..10),
        ) {
            let entries: Vec<_> = payloads.iter().enumerate().map(|(i, p)| openraft::Entry {
                log_id: log_id(term, i as u64 + 5),
                payload: match p {
                    Some(b) => EntryPayload::Normal(BatchData(Bytes::from(b.clone()))),
                    None if i % 2 == 0 => EntryPayload::Blank,
                    None => EntryPayload::Membership(
                        Membership::new_with_defaults(vec![[1u64, 2, 3].into_iter().collect()], [])
                    ),
                },
            }).collect();
            let req = AppendEntriesRequest::<TypeConfig> {
                vote: openraft::impls::Vote::new_committed(term, 1),
                prev_log_id: Some(log_id(term, 4)),
                entries,
                leader_commit: Some(log_id(term, 3)),
            };
            let wire = join(encode_append(&req).unwrap());
            let back = decode_append(wire.clone()).unwrap();
            prop_assert_eq!(format!("{:?}", back.entries), format!("{:?}", req.entries));
            prop_assert_eq!(back.vote, req.vote);
            prop_assert_eq!(back.prev_log_id, req.prev_log_id);
            prop_assert_eq!(back.leader_commit, req.leader_commit);
            let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
            for e in &back.entries {
                if let EntryPayload::Normal(BatchData(b)) = &e.payload {
                    if !b.is_empty() {
                        prop_assert!(range.contains(&(b.as_ptr() as usize)), "payload was copied");
                    }
                }
            }
        }

        /// Garbage bodies are errors, never panics, for every RPC decoder.
        #[test]
        fn garbage_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b = Bytes::from(bytes);
            let _ = decode_append(b.clone());
            let _ = decode_snapshot(b.clone());
            let _ = decode_response::<openraft::raft::VoteResponse<TypeConfig>>(&b);
            let _ = decode::<openraft::raft::VoteRequest<TypeConfig>>(&b);
        }

        /// A valid AppendEntries body cut short is an error.
        #[test]
        fn truncated_append_is_an_error(len in 1usize..100, cut in 0usize..200) {
            let req = AppendEntriesRequest::<TypeConfig> {
                vote: openraft::impls::Vote::new_committed(3, 1),
                prev_log_id: None,
                entries: vec![openraft::Entry {
                    log_id: log_id(3, 1),
                    payload: EntryPayload::Normal(BatchData(Bytes::from(vec![7u8; len]))),
                }],
                leader_commit: None,
            };
            let wire = join(encode_append(&req).unwrap());
            let cut = cut % wire.len();
            prop_assert!(decode_append(wire.slice(..cut)).is_err());
        }
    }

    #[test]
    fn failures_round_trip() {
        let body = encode_response::<()>(Err(&RemoteFailure::UnknownGroup(7)));
        assert_eq!(decode_response::<()>(&body), Err(CodecError::Remote(RemoteFailure::UnknownGroup(7))));
    }
}
