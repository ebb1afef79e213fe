//! Test support: a loopback TCP proxy that forwards everything, except that the
//! first server->client chunk containing a marker is never forwarded: both sockets
//! are shut down instead. That loses exactly one HTTP response in flight (e.g. a
//! `/meta/connect` reply carrying an event), which the acknowledgement extension
//! must repair by redelivery. Plain threads: the crate's tokio has no `io-util`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct CutProxy {
    pub port: u16,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    /// Listens on 127.0.0.1:0 and forwards to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, marker: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(AtomicBool::new(true));
        let (c, s) = (cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                spawn_pipe(client, server, marker, armed.clone(), c.clone());
            }
        });
        Self { port, cuts, stop }
    }

    /// How many responses were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn spawn_pipe(
    client: TcpStream,
    server: TcpStream,
    marker: &'static [u8],
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut server, mut client) = (server, client);
        let mut buf = [0u8; 16 * 1024];
        // The tail of the previous chunk, so a marker split across reads is seen.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(&buf[..n]);
            let seen = window.windows(marker.len()).any(|w| w == marker);
            if seen && armed.swap(false, Ordering::SeqCst) {
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
            let keep = marker.len().saturating_sub(1).min(window.len());
            tail = window[window.len() - keep..].to_vec();
        }
        let _ = client.shutdown(Shutdown::Write);
    });
}
