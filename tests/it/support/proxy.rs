//! A fault-injecting TCP proxy on 127.0.0.1, written in the test: it cuts connections in the
//! middle of an answer, goes silent, or answers `503 Service Unavailable` (or another canned
//! answer, such as S3's), for a chosen number of connections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a [`FaultProxy`] does to a connection it picked.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Relay this many bytes of the server's answer, then cut both sides.
    CutAfter(u64),
    /// Relay this many bytes of the server's answer, then go silent, keeping the
    /// connection open until the client gives up on it.
    StallAfter(u64),
    /// Answer the first request with `503 Service Unavailable` and close, never asking
    /// the server.
    Unavailable,
    /// Answer the request with this whole HTTP response (status line, headers, body) and
    /// close, never asking the server.
    Answer(&'static str),
}

/// S3's answer when it wants fewer requests.
pub const S3_SLOW_DOWN: &str = "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
    Content-Length: 126\r\nConnection: close\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// S3's answer to an access key it does not know.
pub const S3_BAD_KEY: &str = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
    Content-Length: 169\r\nConnection: close\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does \
    not exist in our records.</Message></Error>";

/// A TCP proxy on 127.0.0.1 in front of `upstream` that spoils the first `faults`
/// connections that carry enough data for the fault (the rest pass untouched). It serves
/// at most 200 connections and stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    faults_done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, fault: Fault, faults: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let faults_done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (done, halt) = (faults_done.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            while !halt.load(Ordering::Relaxed) && served < 200 {
                match listener.accept() {
                    Ok((client, _)) => {
                        served += 1;
                        client.set_nonblocking(false).unwrap();
                        let done = done.clone();
                        std::thread::spawn(move || relay(client, upstream, fault, faults, &done));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            faults_done,
            stop,
            thread: Some(thread),
        }
    }

    /// How many connections were spoiled.
    pub fn faults(&self) -> usize {
        self.faults_done.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Claims one of the `limit` faults; false when all are used.
fn claim(done: &AtomicUsize, limit: usize) -> bool {
    done.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n < limit).then_some(n + 1)
    })
    .is_ok()
}

fn relay(client: TcpStream, upstream: u16, fault: Fault, limit: usize, done: &AtomicUsize) {
    let timeout = Some(Duration::from_secs(30));
    let _ = client.set_read_timeout(timeout);
    let answer = match fault {
        Fault::Unavailable => Some(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        Fault::Answer(a) => Some(a),
        _ => None,
    };
    if let Some(answer) = answer {
        if claim(done, limit) {
            let mut c = &client;
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf); // the request head
            let _ = c.write_all(answer.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = server.set_read_timeout(timeout);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    // Client to server: untouched.
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (c2, s2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    // Server to client: maybe cut or stalled.
    let cut_at = match fault {
        Fault::CutAfter(n) | Fault::StallAfter(n) => Some(n),
        Fault::Unavailable | Fault::Answer(_) => None,
    };
    let (mut from, mut to) = (&server, &client);
    let mut relayed = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        if let Some(limit_bytes) = cut_at {
            if relayed + n as u64 > limit_bytes && claim(done, limit) {
                n = (limit_bytes - relayed) as usize;
                let _ = to.write_all(&buf[..n]);
                if let Fault::StallAfter(_) = fault {
                    // Silence until the client closes its side (or 30 s pass).
                    let _ = up.join();
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        relayed += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
}
