//! Tests of the transports over real sockets on 127.0.0.1: UDP, TCP and TLS exchanges,
//! connection reuse, closing and declining connections, certificate checks and timeouts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::limits::StreamLimits;

/// Hands every message to the test.
struct Collect(mpsc::UnboundedSender<Incoming>);

impl Handler for Collect {
    fn on_message(&self, incoming: Incoming) {
        let _ = self.0.send(incoming);
    }
}

fn listen(udp: bool, tcp: bool, tls: bool) -> ListenConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ListenConfig {
        udp: udp.then_some(any),
        tcp: tcp.then_some(any),
        tls: tls.then_some(any),
        max_message_bytes: 65_535,
        user_agent: "voicegate-test".into(),
        limits: StreamLimits::default(),
    }
}

async fn endpoint(
    config: ListenConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    outbound: OutboundConfig,
) -> (Sender, LocalAddrs, mpsc::UnboundedReceiver<Incoming>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (sender, local) = start(config, tls, outbound, Arc::new(Collect(tx)))
        .await
        .unwrap();
    (sender, local, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message within 5 s")
        .expect("handler alive")
}

fn options(transport: TransportKind, branch: &str) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:carrier@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{} 127.0.0.1:5060;branch=z9hG4bK-{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:gw@127.0.0.1>;tag=1\r\n\
         To: <sip:carrier@127.0.0.1>\r\n\
         Call-ID: {branch}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        transport.as_via()
    ))
}

/// The client connects and asks; the server's answer comes back on the same connection;
/// asking again reuses it, from either side.
async fn exchange(
    client: &Sender,
    client_rx: &mut mpsc::UnboundedReceiver<Incoming>,
    server: &Sender,
    server_rx: &mut mpsc::UnboundedReceiver<Incoming>,
    transport: TransportKind,
    remote: SocketAddr,
    server_name: Option<&str>,
) {
    let source = client
        .connect(transport, remote, server_name)
        .await
        .unwrap();
    assert_eq!(source.transport, transport);
    assert_eq!(source.remote, remote);
    assert!(source.connection.is_some());
    assert_ne!(source.local.port(), 0);
    client.send_to(&source, source.remote, options(transport, "a"));

    let incoming = next(server_rx).await;
    let Message::Request(request) = incoming.message else {
        panic!("expected a request")
    };
    assert_eq!(request.method, "OPTIONS");
    assert_eq!(incoming.source.transport, transport);
    assert_eq!(incoming.source.remote, source.local);
    let response = request.response(200, "OK").to_bytes();
    server.send_response(&request.headers, &incoming.source, response);

    let answer = next(client_rx).await;
    let Message::Response(response) = answer.message else {
        panic!("expected a response")
    };
    assert_eq!(response.status, 200);
    assert_eq!(answer.source, source);

    // Reuse: the same connection again, and the server finds it too.
    let again = client
        .connect(transport, remote, server_name)
        .await
        .unwrap();
    assert_eq!(again.connection, source.connection);
    let back = server
        .connect(transport, incoming.source.remote, None)
        .await
        .unwrap();
    assert_eq!(back.connection, incoming.source.connection);
    server.send_to(&back, back.remote, options(transport, "b"));
    let Message::Request(request) = next(client_rx).await.message else {
        panic!("expected a request from the server")
    };
    assert_eq!(request.call_id(), "b@127.0.0.1");
    assert_eq!(client.stats().send_failures.load(Ordering::Relaxed), 0);
    assert_eq!(server.stats().send_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn tcp_connect_send_and_reuse() {
    let (server, server_local, mut server_rx) =
        endpoint(listen(false, true, false), None, OutboundConfig::default()).await;
    let (client, _, mut client_rx) =
        endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
    let remote = server_local.tcp.unwrap();
    exchange(
        &client,
        &mut client_rx,
        &server,
        &mut server_rx,
        TransportKind::Tcp,
        remote,
        None,
    )
    .await;
}

#[tokio::test]
async fn concurrent_connects_share_one_connection() {
    let (_server, server_local, _server_rx) =
        endpoint(listen(false, true, false), None, OutboundConfig::default()).await;
    let (client, _, _client_rx) =
        endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
    let remote = server_local.tcp.unwrap();
    let (a, b) = tokio::join!(
        client.connect(TransportKind::Tcp, remote, None),
        client.connect(TransportKind::Tcp, remote, None)
    );
    assert_eq!(a.unwrap().connection, b.unwrap().connection);
    assert!(client.inner.connecting.lock().unwrap().is_empty());
}

#[tokio::test]
async fn udp_connect_is_the_socket() {
    let (server, server_local, mut server_rx) =
        endpoint(listen(true, false, false), None, OutboundConfig::default()).await;
    let (client, client_local, mut client_rx) =
        endpoint(listen(true, false, false), None, OutboundConfig::default()).await;
    let remote = server_local.udp.unwrap();
    let source = client
        .connect(TransportKind::Udp, remote, None)
        .await
        .unwrap();
    assert_eq!(
        source,
        Source {
            transport: TransportKind::Udp,
            remote,
            local: client_local.udp.unwrap(),
            connection: None,
        }
    );
    client.send_to(&source, remote, options(TransportKind::Udp, "u"));
    let incoming = next(&mut server_rx).await;
    let Message::Request(request) = incoming.message else {
        panic!("expected a request")
    };
    // The Via's sent-by is not the client's port and there is no rport: answer to the
    // source address.
    server.send_to(
        &incoming.source,
        incoming.source.remote,
        request.response(200, "OK").to_bytes(),
    );
    assert!(matches!(
        next(&mut client_rx).await.message,
        Message::Response(r) if r.status == 200
    ));
    // A closed port is an error, not a hang.
    let refused = server
        .connect(TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), None)
        .await;
    assert!(refused.is_err());
    // Without a UDP socket there is nothing to send on.
    let (no_udp, _, _rx) =
        endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
    assert_eq!(
        no_udp
            .connect(TransportKind::Udp, remote, None)
            .await
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotConnected
    );
}

/// Hands every message to the test and declines the addresses the test lists.
struct Gatekeeper {
    tx: mpsc::UnboundedSender<Incoming>,
    declined: Mutex<Vec<IpAddr>>,
}

impl Handler for Gatekeeper {
    fn on_message(&self, incoming: Incoming) {
        let _ = self.tx.send(incoming);
    }

    fn accepts_connection_from(&self, ip: IpAddr) -> bool {
        !self.declined.lock().unwrap().contains(&ip)
    }
}

fn request_call_id(incoming: Incoming) -> String {
    let Message::Request(request) = incoming.message else {
        panic!("expected a request")
    };
    request.call_id().to_string()
}

async fn connect_from(source_ip: &str, target: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    socket.connect(target).await.unwrap()
}

/// What the peer reads until the connection is closed (EOF or reset), None if it is still
/// open after 2 s.
async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn connections_from_an_address_are_closed_and_declined_on_request() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gatekeeper = Arc::new(Gatekeeper {
        tx,
        declined: Mutex::new(Vec::new()),
    });
    let (server, local) = start(
        listen(false, true, false),
        None,
        OutboundConfig::default(),
        gatekeeper.clone(),
    )
    .await
    .unwrap();
    let tcp = local.tcp.unwrap();
    let blocked: IpAddr = "127.0.0.2".parse().unwrap();
    let mut first = connect_from("127.0.0.2", tcp).await;
    let mut second = connect_from("127.0.0.2", tcp).await;
    let mut other = connect_from("127.0.0.3", tcp).await;
    // Its pong shows the second connection is being served.
    second.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    second.read_exact(&mut pong).await.unwrap();

    // An answer queued just before the close is still written, then the connection closes.
    first
        .write_all(&options(TransportKind::Tcp, "c1"))
        .await
        .unwrap();
    let incoming = next(&mut rx).await;
    let Message::Request(request) = incoming.message else {
        panic!("expected a request")
    };
    server.send_response(
        &request.headers,
        &incoming.source,
        request.response(200, "OK").to_bytes(),
    );
    // A connection we opened to that address stays: only accepted ones are closed.
    let peer = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let outbound = server
        .connect(TransportKind::Tcp, peer.local_addr().unwrap(), None)
        .await
        .unwrap();
    let (_held, _) = peer.accept().await.unwrap();
    assert_eq!(server.close_connections_from(blocked), 2);
    assert_eq!(server.close_connections_from(blocked), 0, "asked once");
    let answer = read_to_close(&mut first).await.expect("closed");
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer:?}");
    assert_eq!(read_to_close(&mut second).await.as_deref(), Some(""));
    let closed = &server.stats().connections_closed_on_request;
    for _ in 0..100 {
        if closed.load(Ordering::Relaxed) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed.load(Ordering::Relaxed), 2);
    assert!(server
        .live_connection(TransportKind::Tcp, outbound.remote)
        .is_some());

    // Another address is not touched.
    other
        .write_all(&options(TransportKind::Tcp, "c2"))
        .await
        .unwrap();
    assert_eq!(request_call_id(next(&mut rx).await), "c2@127.0.0.1");

    // Declined: closed at once, nothing read.
    gatekeeper.declined.lock().unwrap().push(blocked);
    let mut third = connect_from("127.0.0.2", tcp).await;
    let _ = third.write_all(&options(TransportKind::Tcp, "c3")).await;
    assert!(read_to_close(&mut third).await.is_some(), "closed at once");
    assert_eq!(
        server.stats().connections_declined.load(Ordering::Relaxed),
        1
    );
    // Accepted again once the handler says so.
    gatekeeper.declined.lock().unwrap().clear();
    let mut fourth = connect_from("127.0.0.2", tcp).await;
    fourth
        .write_all(&options(TransportKind::Tcp, "c4"))
        .await
        .unwrap();
    assert_eq!(request_call_id(next(&mut rx).await), "c4@127.0.0.1");
    assert!(
        rx.try_recv().is_err(),
        "the declined connection's request was not read"
    );
}

fn self_signed() -> (Arc<rustls::ServerConfig>, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    (Arc::new(config), cert_pem)
}

#[tokio::test]
async fn tls_connect_send_and_reuse() {
    let (server_tls, ca_pem) = self_signed();
    let (server, server_local, mut server_rx) = endpoint(
        listen(false, false, true),
        Some(server_tls),
        OutboundConfig::default(),
    )
    .await;
    let outbound = OutboundConfig {
        tls: Some(client_tls_config(Some(ca_pem.as_bytes()), false).unwrap()),
        ..OutboundConfig::default()
    };
    let (client, _, mut client_rx) = endpoint(listen(false, false, false), None, outbound).await;
    let remote = server_local.tls.unwrap();
    exchange(
        &client,
        &mut client_rx,
        &server,
        &mut server_rx,
        TransportKind::Tls,
        remote,
        Some("localhost"),
    )
    .await;
}

#[tokio::test]
async fn tls_certificate_is_checked() {
    let (server_tls, ca_pem) = self_signed();
    let (_server, server_local, _server_rx) = endpoint(
        listen(false, false, true),
        Some(server_tls),
        OutboundConfig::default(),
    )
    .await;
    let remote = server_local.tls.unwrap();
    // The webpki roots alone do not know a self-signed certificate.
    let (plain, _, _rx) =
        endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
    assert!(plain
        .connect(TransportKind::Tls, remote, Some("localhost"))
        .await
        .is_err());
    // The right CA but the wrong name (the IP, which the certificate does not carry).
    let trusting = OutboundConfig {
        tls: Some(client_tls_config(Some(ca_pem.as_bytes()), false).unwrap()),
        ..OutboundConfig::default()
    };
    let (client, _, _rx) = endpoint(listen(false, false, false), None, trusting).await;
    assert!(client
        .connect(TransportKind::Tls, remote, None)
        .await
        .is_err());
    assert!(client
        .connect(TransportKind::Tls, remote, Some("bad name!"))
        .await
        .is_err());
    // Tests may skip verification.
    let insecure = OutboundConfig {
        tls: Some(client_tls_config(None, true).unwrap()),
        ..OutboundConfig::default()
    };
    let (client, _, _rx) = endpoint(listen(false, false, false), None, insecure).await;
    assert!(client
        .connect(TransportKind::Tls, remote, None)
        .await
        .is_ok());
    assert!(client_tls_config(Some(b"not pem"), false).is_err());
}

#[tokio::test]
async fn handshake_that_never_ends_times_out() {
    // A TCP listener that accepts and never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let outbound = OutboundConfig {
        tls: Some(client_tls_config(None, true).unwrap()),
        connect_timeout: Duration::from_millis(200),
    };
    let (client, _, _rx) = endpoint(listen(false, false, false), None, outbound).await;
    let err = client
        .connect(TransportKind::Tls, remote, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    hold.abort();
}
