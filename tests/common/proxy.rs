//! A TCP proxy that a test puts between a program and the server it talks to
//! (a lobby node and its Redis), so that the link between the two can be cut
//! and healed without root or a network namespace: [`Proxy::cut`] drops every
//! connection and refuses new ones, or holds them all unanswered as a network
//! that drops packets would; [`Proxy::heal`] forwards again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the proxy waits to reach the server before it gives up on a connection.
const CONNECT: Duration = Duration::from_secs(1);

/// The state of the link a proxy stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Up,
    /// Every connection is closed at once, and each new one as soon as it is accepted.
    Refused,
    /// Nothing passes and nothing is closed: connections stay open and
    /// unanswered, and new ones are accepted and ignored, until the link heals
    /// (then they are closed, as their peers would long have given up).
    Blackholed,
}

/// A proxy on a free port of 127.0.0.1 to one server. Stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding every connection made to [`addr`](Self::addr) to `server`.
    pub async fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (link, watching) = watch::channel(Link::Up);
        let task = tokio::spawn(accept(listener, server, watching));
        Proxy { addr, link, task }
    }

    /// Where the program under test connects instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link, [`Link::Refused`] or [`Link::Blackholed`].
    pub fn cut(&self, how: Link) {
        self.link.send_replace(how);
    }

    /// Forwards again; connections held while blackholed are closed.
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The connections see the sender go and end too.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, server: SocketAddr, link: watch::Receiver<Link>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(forward(client, server, link.clone()));
    }
}

/// Serves one connection for as long as the link lets it.
async fn forward(mut client: TcpStream, server: SocketAddr, mut link: watch::Receiver<Link>) {
    let now = *link.borrow_and_update();
    match now {
        Link::Refused => return,
        Link::Blackholed => {
            until_not(&mut link, Link::Blackholed).await;
            return;
        }
        Link::Up => {}
    }
    let mut upstream = match tokio::time::timeout(CONNECT, TcpStream::connect(server)).await {
        Ok(Ok(upstream)) => upstream,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
        cut = until_not(&mut link, Link::Up) => cut,
    };
    if cut == Link::Blackholed {
        // Both sockets stay open and unread until the link changes again.
        until_not(&mut link, Link::Blackholed).await;
    }
}

/// Waits until the link is other than `state`; what it became (`Refused`
/// once the proxy is gone).
async fn until_not(link: &mut watch::Receiver<Link>, state: Link) -> Link {
    loop {
        let now = *link.borrow_and_update();
        if now != state {
            return now;
        }
        if link.changed().await.is_err() {
            return Link::Refused;
        }
    }
}
