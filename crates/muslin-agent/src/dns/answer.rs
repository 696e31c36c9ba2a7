//! One query's answer from the cluster's names, or from upstream.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use muslin_model::dns::{Kind, Lookup, NameIndex, TTL_SECONDS};

use super::Shared;

/// The resolver of one network: it knows which network a query came
/// through by the socket it arrived on, since overlapping networks may
/// ask from the same address.
pub(super) struct NetHandler {
    pub network: String,
    pub shared: Arc<Shared>,
}

fn kind(t: RecordType) -> Kind {
    match t {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        RecordType::ANY => Kind::Address,
        RecordType::PTR => Kind::Ptr,
        _ => Kind::Other,
    }
}

/// Addresses in a new order each time: several containers under one
/// alias share its load.
fn shuffle(v: &mut [IpAddr]) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9_7f4a_7c15),
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        s.set(x);
    });
}

#[async_trait::async_trait]
impl RequestHandler for NetHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        // A client that speaks EDNS gets answers up to its buffer (at
        // most 1232 bytes, which fits any path's MTU); one that does not,
        // 512 bytes and the truncation bit beyond (then it asks over TCP).
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().clamp(512, 1232));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m
        };
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                // Not exactly one query: nothing a stub resolver sends.
                let m = fail(ResponseCode::FormErr);
                return send(&mut response, builder.build_no_records(m)).await;
            }
        };
        let qtype = info.query.query_type();
        let qname = info.query.original().name().clone();
        let mut m = Metadata::response_from_request(&request.metadata);
        m.recursion_available = true;
        match self.decide(&self.shared.index(), request.src().ip(), &qname, qtype) {
            Outcome::Refused => {
                let m = fail(ResponseCode::Refused);
                send(&mut response, builder.build_no_records(m)).await
            }
            Outcome::Answer(records) => {
                m.authoritative = true;
                send(&mut response, builder.build(m, &records, [], [], [])).await
            }
            Outcome::Negative(code, soa) => {
                m.authoritative = true;
                m.response_code = code;
                let soa = [*soa];
                send(&mut response, builder.build(m, [], [], &soa, [])).await
            }
            Outcome::Forward => match self.shared.upstream().forward(qname, qtype).await {
                Ok(records) => send(&mut response, builder.build(m, &records, [], [], [])).await,
                Err(code) => {
                    m.response_code = code;
                    send(&mut response, builder.build_no_records(m)).await
                }
            },
        }
    }
}

/// What a query gets, whichever transport it came by.
pub(super) enum Outcome {
    /// The asker is not of this resolver's network.
    Refused,
    /// Authoritative records of the cluster.
    Answer(Vec<Record>),
    /// NXDOMAIN or an empty NOERROR, with the zone's SOA for negative
    /// caching.
    Negative(ResponseCode, Box<Record>),
    /// Not the cluster's: ask upstream.
    Forward,
}

impl NetHandler {
    pub(super) fn upstream(&self) -> Arc<super::upstream::Upstream> {
        self.shared.upstream()
    }

    /// The index a receiver answers from: `cached` while still current.
    pub(super) fn current(&self, cached: &mut (u64, Arc<NameIndex>)) {
        let v = self.shared.version();
        if v != cached.0 {
            *cached = (v, self.shared.index());
        }
    }

    pub(super) fn fresh(&self) -> (u64, Arc<NameIndex>) {
        (self.shared.version(), self.shared.index())
    }

    pub(super) fn decide(
        &self,
        index: &NameIndex,
        src: IpAddr,
        qname: &Name,
        qtype: RecordType,
    ) -> Outcome {
        if !index.admits(&self.network, src) {
            self.shared.count_refused();
            return Outcome::Refused;
        }
        let visible = index.visible(&self.network, src);
        let answer = index.lookup(visible, &qname.to_ascii(), kind(qtype));
        self.shared.count(&answer);
        let soa = || {
            let apex =
                Name::from_ascii(format!("{}.", index.domain())).unwrap_or_else(|_| Name::root());
            let rname = Name::from_ascii("hostmaster.")
                .ok()
                .and_then(|h| h.append_domain(&apex).ok())
                .unwrap_or_else(Name::root);
            Record::from_rdata(
                apex.clone(),
                TTL_SECONDS,
                RData::SOA(SOA::new(apex, rname, 1, 60, 30, 600, TTL_SECONDS)),
            )
        };
        match answer {
            Lookup::Addresses(mut addrs) => {
                shuffle(&mut addrs);
                Outcome::Answer(
                    addrs
                        .into_iter()
                        .map(|a| {
                            let data = match a {
                                IpAddr::V4(v4) => RData::A(A(v4)),
                                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                            };
                            Record::from_rdata(qname.clone(), TTL_SECONDS, data)
                        })
                        .collect(),
                )
            }
            Lookup::Names(names) => Outcome::Answer(
                names
                    .into_iter()
                    .filter_map(|n| Name::from_ascii(format!("{n}.")).ok())
                    .map(|n| Record::from_rdata(qname.clone(), TTL_SECONDS, RData::PTR(PTR(n))))
                    .collect(),
            ),
            Lookup::NoData => Outcome::Negative(ResponseCode::NoError, Box::new(soa())),
            Lookup::NxDomain => Outcome::Negative(ResponseCode::NXDomain, Box::new(soa())),
            Lookup::Forward => Outcome::Forward,
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let header = hickory_proto::op::Header {
        metadata: *message.metadata(),
        counts: Default::default(),
    };
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(cause = %e, "could not send a DNS answer");
            header.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_every_order() {
        let addrs: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut v = addrs.clone();
            shuffle(&mut v);
            let mut sorted = v.clone();
            sorted.sort();
            assert_eq!(sorted, addrs);
            seen.insert(v);
        }
        assert_eq!(seen.len(), 6);
    }
}
