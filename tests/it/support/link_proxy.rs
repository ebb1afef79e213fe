//! Test support: a loopback TCP proxy standing for a network link that can be cut and
//! healed on demand. Cut: every open connection is shut down at once and new ones are
//! accepted and closed straight away (a peer sees its connection drop, then every reconnect
//! fail, as behind a partition); healed: new connections are forwarded again. Plain threads:
//! the crate's tokio has no `io-util`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct LinkProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both sockets of every forwarded connection, to shut down when the link is cut.
    open: Mutex<Vec<TcpStream>>,
    /// Connections refused while cut (a peer trying to reconnect: a signal for tests).
    refused: AtomicUsize,
}

impl LinkProxy {
    /// Listens on 127.0.0.1:0 and forwards to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if s.cut.load(Ordering::SeqCst) {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                forward(&s, client, server);
            }
        });
        Self { port, shared }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Cuts the link: every open connection is shut down, new ones are closed at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap());
        for socket in open {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Heals it: new connections are forwarded again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Connections closed unforwarded because the link was cut.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the blocking accept so the thread sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn forward(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let clones = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    );
    let (Ok(c_read), Ok(s_write), Ok(c_keep), Ok(s_keep)) = clones else {
        return;
    };
    {
        let mut open = shared.open.lock().unwrap();
        // Closed connections' sockets are dropped on the next cut; a test opens a handful.
        open.push(c_keep);
        open.push(s_keep);
    }
    // A cut between the check in the accept loop and the registration above: shut now.
    if shared.cut.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    std::thread::spawn(move || pipe(c_read, s_write));
    std::thread::spawn(move || pipe(server, client));
}

/// Copies `from` to `to` until either side closes, then closes both directions of `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
