//! The real server over TLS: a client that verifies the CA, certificate rotation without restart, and
//! clients that are slow, oversized or not speaking TLS at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook::facts::StaticFacts;
use webhook::handlers::Policy;
use webhook::metrics::Metrics;
use webhook::server::{AppState, DEFAULT_CLIENT_TIMEOUT, serve_tls};
use webhook::tls::{self, CertFiles, CertStore};

struct Server {
    addr: std::net::SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

async fn start(store: Arc<CertStore>) -> Server {
    start_with(store, DEFAULT_CLIENT_TIMEOUT).await
}

/// A server whose clients get `client_timeout` for each of the handshake, the headers and the body.
async fn start_with(store: Arc<CertStore>, client_timeout: Duration) -> Server {
    let state = Arc::new(AppState {
        facts: Arc::new(StaticFacts::default()),
        policy: Policy::default(),
        metrics: Arc::new(Metrics::default()),
        draining: Default::default(),
        client_timeout,
        certificate: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let config = Arc::new(tls::server_config(store).expect("tls config"));
    let task = tokio::spawn(serve_tls(
        listener,
        config,
        state.clone(),
        rx,
        Duration::from_secs(5),
    ));
    Server {
        addr,
        shutdown,
        task,
        state,
    }
}

fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"))
        .resolve("webhook.test.svc", "127.0.0.1:0".parse().expect("addr"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn url(server: &Server, path: &str) -> String {
    format!("https://webhook.test.svc:{}{path}", server.addr.port())
}

fn sgc_review(spec: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "kind": {"group": "egressgateway.kubernetes.azure.com", "version": "v1alpha1", "kind": "StaticGatewayConfiguration"},
        "resource": {"group": "egressgateway.kubernetes.azure.com", "version": "v1alpha1", "resource": "staticgatewayconfigurations"},
        "name": "gw", "namespace": "ns", "operation": "CREATE", "userInfo": {"username": "u"},
        "object": {"metadata": {"name": "gw"}, "spec": spec}}})
}

async fn post(client: &reqwest::Client, server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let resp = client
        .post(url(server, path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Posts the review of a valid configuration, which must be allowed (HTTP 200).
async fn assert_allows_a_valid_configuration(client: &reqwest::Client, server: &Server) {
    let (code, body) = post(
        client,
        server,
        "/validate-staticgatewayconfiguration",
        &sgc_review(json!({"gatewayNodepoolName": "p"})),
    )
    .await;
    assert_eq!((code, body["response"]["allowed"].clone()), (200, json!(true)));
}

#[tokio::test]
async fn reviews_over_verified_tls() {
    let generated = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    let server = start(CertStore::new(generated.key)).await;
    let client = trusting(&generated.ca_pem);

    let (code, body) = post(
        &client,
        &server,
        "/validate-staticgatewayconfiguration",
        &sgc_review(json!({})),
    )
    .await;
    assert_eq!(code, 200, "denials are HTTP 200");
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(body["response"]["uid"], "u-1");

    assert_allows_a_valid_configuration(&client, &server).await;

    // Parsable but not a review: 200 with a denial; not JSON: 400.
    let (code, body) = post(
        &client,
        &server,
        "/validate-staticgatewayconfiguration",
        &json!({"kind": "Pod"}),
    )
    .await;
    assert_eq!((code, body["response"]["allowed"].clone()), (200, json!(false)));
    let resp = client
        .post(url(&server, "/mutate-pod"))
        .body("garbage")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);

    // Unknown paths, such as a mutating endpoint for GatewayPools (they have no defaults), are not served.
    let resp = client
        .post(url(&server, "/mutate-gatewaypool"))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 404);

    // Oversized bodies are refused before parsing.
    let huge = vec![b' '; webhook::review::MAX_BODY_BYTES + 1];
    let resp = client
        .post(url(&server, "/mutate-pod"))
        .body(huge)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 413);

    // A client that does not trust our CA cannot talk to us.
    let other = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    assert!(
        trusting(&other.ca_pem)
            .get(url(&server, "/healthz"))
            .send()
            .await
            .is_err()
    );

    let metrics = server.state.metrics.encode();
    assert!(metrics.contains("admission_requests_total{kind=\"StaticGatewayConfiguration\",operation=\"CREATE\",result=\"denied\"} 1"), "{metrics}");
    assert!(
        metrics.contains("admission_request_duration_seconds_count{kind=\"StaticGatewayConfiguration\"} 3"),
        "{metrics}"
    );

    let _ = server.shutdown.send(true);
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server stops")
        .expect("join");
}

#[tokio::test]
async fn certificate_rotation_without_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    // A fresh CA + leaf, written the way a Secret volume update lands.
    let write = || -> String {
        let (ca_pem, chain, key) = pem_pair();
        std::fs::write(&files.key, key).expect("key");
        std::fs::write(&files.cert, chain).expect("cert");
        ca_pem
    };
    let ca1 = write();
    let store = CertStore::new(files.load().expect("load"));
    let server = start(store.clone()).await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(files.clone().watch(
        store,
        Duration::from_millis(50),
        move |outcome| {
            let _ = events_tx.send(outcome);
        },
        rx,
    ));

    assert!(trusting(&ca1).get(url(&server, "/healthz")).send().await.is_ok());
    let ca2 = write();
    // Await the condition: the new CA is accepted (bounded), then the old one is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if trusting(&ca2).get(url(&server, "/healthz")).send().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "rotated certificate never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        trusting(&ca1).get(url(&server, "/healthz")).send().await.is_err(),
        "old certificate still served"
    );
    assert_eq!(events.recv().await, Some(tls::Reload::Swapped));

    // A broken pair is not swapped in: the current certificate keeps being served.
    std::fs::write(&files.cert, "not a certificate").expect("write");
    let outcome = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("watcher saw the change");
    assert_eq!(outcome, Some(tls::Reload::Rejected));
    assert!(trusting(&ca2).get(url(&server, "/healthz")).send().await.is_ok());
    let _ = server.shutdown.send(true);
}

fn pem_pair() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["webhook.test.svc".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test]
async fn slow_and_garbage_clients_do_not_wedge_the_server() {
    let generated = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    let server = start(CertStore::new(generated.key)).await;
    let client = trusting(&generated.ca_pem);

    // A client that connects and says nothing, one that sends half a ClientHello, and one that speaks plain
    // HTTP to the TLS port.
    let _silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"POST /mutate-pod HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    // The server closes the plain-HTTP connection (TLS alert or EOF) instead of hanging on it.
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("plain client answered");
    assert!(n.is_ok());

    // Meanwhile real reviews are served.
    for _ in 0..20 {
        assert_allows_a_valid_configuration(&client, &server).await;
    }
    let _ = server.shutdown.send(true);
}

/// The client timeout of [`slow_clients_are_cut_off_after_the_client_timeout`]: short, so the test is quick.
const SHORT_CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

/// Reads `stream` until the server closes it and returns what it sent. Bounded by half the default client
/// timeout: only the short timeout under test, not the default one, closes the connection within that.
async fn until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), what: &str) -> Vec<u8> {
    let mut sent = Vec::new();
    let read = tokio::time::timeout(DEFAULT_CLIENT_TIMEOUT / 2, stream.read_to_end(&mut sent))
        .await
        .unwrap_or_else(|_| panic!("{what}: the server kept the connection open"));
    match read {
        Ok(_) => sent,
        // A reset (the server closed with bytes of ours unread) closes it too, and so does a TLS connection
        // closed without close_notify (the server dropped it).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            sent
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A TLS connection to `server` that trusts `ca_pem`, offering only `alpn` (`http/1.1` or `h2`).
async fn tls_connect(
    server: &Server,
    ca_pem: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("webhook.test.svc").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn slow_clients_are_cut_off_after_the_client_timeout() {
    let generated = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    let server = start_with(CertStore::new(generated.key), SHORT_CLIENT_TIMEOUT).await;

    // Connects and says nothing: closed once the handshake's time is up.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(until_closed(&mut silent, "silent client").await, b"");

    // Starts a ClientHello and stalls: closed, with nothing sent back.
    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    assert_eq!(until_closed(&mut stalled, "stalled handshake").await, b"");

    // Completes the handshake, then sends no request (HTTP/1.1 and HTTP/2): closed.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut idle = tls_connect(&server, &generated.ca_pem, alpn).await;
        let what = format!("{} client sending no request", String::from_utf8_lossy(alpn));
        until_closed(&mut idle, &what).await;
    }

    // Stalls in the request headers: closed.
    let mut headers = tls_connect(&server, &generated.ca_pem, b"http/1.1").await;
    headers
        .write_all(b"POST /validate-staticgatewayconfiguration HTTP/1.1\r\nHost: webhook.test.svc\r\n")
        .await
        .expect("write");
    until_closed(&mut headers, "stalled headers").await;

    // Sends its headers, then only part of the body it announced: 408.
    let mut body = tls_connect(&server, &generated.ca_pem, b"http/1.1").await;
    body.write_all(
        b"POST /validate-staticgatewayconfiguration HTTP/1.1\r\nHost: webhook.test.svc\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"",
    )
    .await
    .expect("write");
    let answer = String::from_utf8(until_closed(&mut body, "stalled body").await).expect("HTTP text");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let metrics = server.state.metrics.encode();
    assert!(
        metrics.contains(
            "admission_requests_total{kind=\"StaticGatewayConfiguration\",operation=\"\",result=\"error\"} 1"
        ),
        "{metrics}"
    );

    // Meanwhile a client that does not dawdle is served.
    assert_allows_a_valid_configuration(&trusting(&generated.ca_pem), &server).await;
    let _ = server.shutdown.send(true);
}

#[tokio::test]
async fn readiness_follows_draining() {
    let generated = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    let server = start(CertStore::new(generated.key)).await;
    let client = trusting(&generated.ca_pem);
    let readyz = || async {
        client
            .get(url(&server, "/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };
    assert_eq!(readyz().await, 200);
    server
        .state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(readyz().await, 503);
    let _ = server.shutdown.send(true);
}

#[tokio::test]
async fn liveness_fails_only_once_the_self_generated_certificate_has_expired() {
    let generated = tls::self_signed(&["webhook.test.svc".to_string()]).expect("certs");
    let server = start(CertStore::new(generated.key.clone())).await;
    let client = trusting(&generated.ca_pem);
    let healthz = || async {
        let resp = client
            .get(url(&server, "/healthz"))
            .send()
            .await
            .expect("healthz");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    };
    // Untracked (certificate files) and freshly made: alive.
    assert_eq!(healthz().await.0, 200);
    server.state.certificate.track(&generated);
    assert_eq!(healthz().await.0, 200);
    let made_days_ago = |days: i64| {
        tls::self_signed_at(
            &["webhook.test.svc".to_string()],
            time::OffsetDateTime::now_utc() - time::Duration::days(days),
            tls::SELF_SIGNED_LIFETIME,
        )
        .expect("certs")
    };
    // A pair made 320 days ago (renewal was due at day 243) that is still served: renewal is failing, but the
    // certificate is still good, and a restart would not renew it either. Alive.
    server.state.certificate.track(&made_days_ago(320));
    assert_eq!(healthz().await.0, 200);
    // Expired: only a restart (a new pair) helps.
    server.state.certificate.track(&made_days_ago(366));
    let (status, reason) = healthz().await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    let _ = server.shutdown.send(true);
}
