//! The node's DNS server: `hickory-server` over UDP and TCP, answering `cluster.local` from the
//! shared [`Zone`] (authoritatively, empty answers and NXDOMAIN included) and forwarding other
//! names to the node's resolvers, or refusing them when the node is isolated.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

use crate::dns::{Data, Reply, Want, Zone, DOMAIN};
use crate::Error;

/// Records live this long in caches: Services change, and a stale address costs more than a
/// query.
const TTL: u32 = 5;

/// Answers DNS questions for the node's pods.
struct Handler {
    zone: Arc<RwLock<Zone>>,
    /// The node's resolvers for other names; none when isolated.
    upstream: Vec<SocketAddr>,
}

/// Starts the server on `udp` and `tcp` (bound already: see [`crate::holder`]). `upstream`:
/// where other names go.
pub fn serve(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    zone: Arc<RwLock<Zone>>,
    upstream: Vec<SocketAddr>,
) -> Result<Server<impl RequestHandler>, Error> {
    let io = |e| Error::io("serve DNS on", std::path::Path::new("the held sockets"), e);
    udp.set_nonblocking(true).map_err(io)?;
    tcp.set_nonblocking(true).map_err(io)?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(io)?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io)?;
    let mut server = Server::new(Handler { zone, upstream });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 65535);
    Ok(server)
}

/// The node's resolvers from its `/etc/resolv.conf`, port 53 (loopback ones are left out: a
/// pod's query cannot be answered by the node's own stub resolver on its behalf reliably).
pub fn node_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{text}.")).unwrap_or_else(|_| Name::root())
}

fn record(owner: &str, data: &Data) -> Record {
    let rdata = match data {
        Data::A(ip) => RData::A(A(*ip)),
        Data::Srv(port, target) => RData::SRV(SRV::new(0, 100, *port, name(target))),
        Data::Cname(target) => RData::CNAME(CNAME(name(target))),
    };
    Record::from_rdata(name(owner), TTL, rdata)
}

/// The zone's SOA, given with negative answers so resolvers cache them briefly.
fn soa() -> Record {
    let soa = SOA::new(
        name(&format!("ns.dns.{DOMAIN}")),
        name(&format!("hostmaster.{DOMAIN}")),
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Record::from_rdata(name(DOMAIN), TTL, RData::SOA(soa))
}

impl Handler {
    async fn forward(&self, raw: &[u8]) -> Option<Message> {
        for upstream in &self.upstream {
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .ok()?;
            let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if socket.send_to(raw, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
            {
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    return Some(m);
                }
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.upstream.is_empty();
        let builder = MessageResponseBuilder::from_message_request(request);
        let Some(query) = request.queries.queries().first() else {
            metadata.response_code = ResponseCode::FormErr;
            return send(&mut response, builder.build_no_records(metadata)).await;
        };
        let want = match query.query_type() {
            RecordType::A => Want::A,
            RecordType::SRV => Want::Srv,
            _ => Want::Other,
        };
        let reply = self
            .zone
            .read()
            .expect("dns zone")
            .answer(&query.name().to_string(), want);
        match reply {
            Reply::Records(records) => {
                metadata.authoritative = true;
                let answers: Vec<Record> = records.iter().map(|(n, d)| record(n, d)).collect();
                let negative = if answers.is_empty() {
                    vec![soa()]
                } else {
                    Vec::new()
                };
                let message = builder.build(
                    metadata,
                    answers.iter(),
                    negative.iter(),
                    [].iter(),
                    [].iter(),
                );
                send(&mut response, message).await
            }
            Reply::NxDomain => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                let negative = [soa()];
                let message =
                    builder.build(metadata, [].iter(), negative.iter(), [].iter(), [].iter());
                send(&mut response, message).await
            }
            Reply::Outside if self.upstream.is_empty() => {
                metadata.response_code = ResponseCode::Refused;
                send(&mut response, builder.build_no_records(metadata)).await
            }
            Reply::Outside => match self.forward(request.as_slice()).await {
                Some(upstream) => {
                    metadata.response_code = upstream.metadata.response_code;
                    metadata.authoritative = false;
                    let message = builder.build(
                        metadata,
                        upstream.answers.iter(),
                        upstream.authorities.iter(),
                        [].iter(),
                        upstream
                            .additionals
                            .iter()
                            .filter(|r| r.record_type() != RecordType::OPT),
                    );
                    send(&mut response, message).await
                }
                None => {
                    metadata.response_code = ResponseCode::ServFail;
                    send(&mut response, builder.build_no_records(metadata)).await
                }
            },
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
    let metadata = *message.metadata();
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS answer");
            let mut failed = metadata;
            failed.response_code = ResponseCode::ServFail;
            hickory_server::proto::op::Header {
                metadata: failed,
                counts: Default::default(),
            }
            .into()
        }
    }
}
