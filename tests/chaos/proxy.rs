//! A TCP proxy between one worker and the coordinator that plays network faults on command:
//! slow links, black holes (nothing passes, nothing is refused), replies lost after the request
//! was forwarded, and connections reset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weather {
    Clear,
    /// Every chunk waits this long before it is passed on.
    Slow(Duration),
    /// Nothing passes either way (chunks wait) until the weather changes.
    BlackHole,
    /// Requests pass; the first reply bytes of a connection after a request are dropped and the
    /// connection is reset, so the server acted on a request whose answer the client never gets.
    LoseReplies,
}

struct Link {
    weather: Mutex<Weather>,
    /// Bumped to reset every open connection.
    cuts: watch::Sender<u64>,
    /// Replies dropped so far.
    lost: Mutex<u64>,
}

/// A running proxy to `127.0.0.1:target`.
pub struct Proxy {
    pub port: u16,
    link: Arc<Link>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = Arc::new(Link {
            weather: Mutex::new(Weather::Clear),
            cuts: watch::channel(0).0,
            lost: Mutex::new(0),
        });
        let l = link.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let l = l.clone();
                tokio::spawn(async move {
                    // A coordinator that is down refuses: so does the proxy (the client retries).
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        relay(inbound, outbound, l).await;
                    }
                });
            }
        });
        Proxy { port, link }
    }

    pub fn set(&self, w: Weather) {
        *self.link.weather.lock().unwrap() = w;
    }

    /// Resets every open connection.
    pub fn cut(&self) {
        self.link.cuts.send_modify(|c| *c += 1);
    }

    /// Replies dropped so far.
    pub fn lost(&self) -> u64 {
        *self.link.lost.lock().unwrap()
    }
}

async fn relay(inbound: TcpStream, outbound: TcpStream, link: Arc<Link>) {
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let start = Instant::now();
    // Either direction ending (or a cut) drops both sockets.
    tokio::select! {
        _ = pump(ir, ow, &link, None) => {}
        _ = pump(or, iw, &link, Some(start)) => {}
        _ = async {
            let mut cuts = link.cuts.subscribe();
            let _ = cuts.changed().await;
        } => {}
    }
}

/// Copies one direction; `reply` (the connection's start) marks the server-to-client one.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: &Link,
    reply: Option<Instant>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let w = *link.weather.lock().unwrap();
            match w {
                Weather::Clear => break,
                Weather::Slow(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Weather::BlackHole => tokio::time::sleep(Duration::from_millis(20)).await,
                // The connection's opening (HTTP/2 settings) passes, so requests get through.
                Weather::LoseReplies => match reply {
                    Some(t) if t.elapsed() > Duration::from_millis(200) => {
                        *link.lost.lock().unwrap() += 1;
                        return;
                    }
                    _ => break,
                },
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
