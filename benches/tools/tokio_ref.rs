//! The plain design ingestd has to beat (issue 13): one tokio current-thread runtime
//! serving HTTP/1.1 keep-alive connections, heads parsed by httparse, Content-Length
//! bodies, each POST body produced as one record by an rdkafka BaseProducer that its own
//! thread polls, answered 202 once librdkafka has it. It takes ingestd's librdkafka
//! defaults. `GET /queue` answers the records librdkafka still holds; any other `GET` gets
//! 200 (readiness). No limits, no chunked bodies, no contracts beyond
//! 202: a reference for CPU per request, not a server to run.
//!
//!   cargo run --release --example tokio_ref -- BROKERS TOPIC LISTEN_ADDR
//!
//! Prints `tokio_ref listening on ADDR` once bound.

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, listen] = &args[..] else {
        eprintln!("usage: tokio_ref BROKERS TOPIC LISTEN_ADDR");
        std::process::exit(2);
    };
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers);
    for (k, v) in ingestd::config::Config::default().kafka_properties() {
        cc.set(k, v);
    }
    let producer: Arc<BaseProducer> = Arc::new(cc.create().expect("producer"));
    let poller = producer.clone();
    std::thread::spawn(move || loop {
        poller.poll(Duration::from_millis(100));
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let topic: Arc<str> = topic.as_str().into();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen.as_str())
            .await
            .expect("bind");
        println!("tokio_ref listening on {}", l.local_addr().unwrap());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, producer.clone(), topic.clone()));
        }
    });
}

/// Answers every complete request in the buffer, writes the answers of one read in one
/// write (as ingestd does), reads more.
async fn serve(mut s: TcpStream, p: Arc<BaseProducer>, topic: Arc<str>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out = Vec::new();
    loop {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            let head = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0usize);
            if buf.len() < head + len {
                break;
            }
            if req.path == Some("/queue") {
                // Records librdkafka still holds: benches/run.py waits for 0 after a run,
                // so that their delivery counts in that run's CPU.
                let n = p.in_flight_count().to_string();
                let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", n.len());
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(n.as_bytes());
            } else if req.method == Some("GET") {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            } else {
                produce(&p, &topic, &buf[head..head + len]).await;
                out.extend_from_slice(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
            }
            buf.drain(..head + len);
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        buf.reserve(4096);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Hands the record to librdkafka, waiting while its queue is full.
async fn produce(p: &BaseProducer, topic: &str, body: &[u8]) {
    loop {
        match p.send(BaseRecord::<(), [u8]>::to(topic).payload(body)) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::task::yield_now().await;
            }
            Err((e, _)) => {
                eprintln!("produce: {e}");
                return;
            }
        }
    }
}
