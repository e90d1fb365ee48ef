//! A listener whose connections can be cut from inside a handler, and that can stop listening.
//!
//! axum's `serve` gives no per-connection control, but some behaviours need it: the `Drop` fault
//! (the client must see the connection close without a response), `cut_connections` and
//! `shutdown` (parked long polls must be closed, not left to finish). Each accepted stream
//! carries a kill switch; once flipped (or once the server shuts down, or every connection is
//! cut) every read and write fails, so hyper drops the connection without writing the response
//! it was handed. `stop_listening` closes the socket itself, so new connections are refused,
//! and `start_listening` binds the same address again.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Shared;

pub struct KillListener {
    inner: Option<TcpListener>,
    /// The bound address, bound again after a stop.
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
    listening: watch::Receiver<bool>,
    cut: watch::Receiver<u64>,
    bound: watch::Sender<usize>,
}

impl KillListener {
    pub fn new(inner: TcpListener, addr: SocketAddr, shared: &Shared) -> KillListener {
        shared.bound.send_modify(|n| *n += 1);
        KillListener {
            inner: Some(inner),
            addr,
            shutdown: shared.shutdown.subscribe(),
            listening: shared.listening.subscribe(),
            cut: shared.cut_epoch.subscribe(),
            bound: shared.bound.clone(),
        }
    }

    /// Drop the socket while listening is off, then bind the address again.
    async fn follow_listening(&mut self) {
        if *self.listening.borrow() {
            return;
        }
        if self.inner.take().is_some() {
            self.bound.send_modify(|n| *n -= 1);
        }
        if self.listening.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
        loop {
            match crate::bind(&self.addr.to_string()).await {
                Ok(l) => {
                    self.inner = Some(l);
                    self.bound.send_modify(|n| *n += 1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "binding again failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
}

impl Drop for KillListener {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.bound.send_modify(|n| *n -= 1);
        }
    }
}

/// Per-connection information handed to handlers through `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct ConnTag {
    pub remote: SocketAddr,
    kill: Arc<watch::Sender<bool>>,
}

impl ConnTag {
    /// Close this connection without answering the request in flight.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }
}

pub struct KillStream {
    inner: TcpStream,
    dead: Pin<Box<dyn Future<Output = ()> + Send>>,
    is_dead: bool,
}

impl KillStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.is_dead && self.dead.as_mut().poll(cx).is_ready() {
            self.is_dead = true;
        }
        if self.is_dead {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut by emulator",
            ))
        } else {
            Ok(())
        }
    }
}

/// Resolves once `rx` holds `true`; never if its sender is gone.
async fn flipped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Listener for KillListener {
    type Io = KillStream;
    type Addr = ConnTag;

    async fn accept(&mut self) -> (KillStream, ConnTag) {
        loop {
            self.follow_listening().await;
            let Some(inner) = &self.inner else { continue };
            let accepted = tokio::select! {
                r = inner.accept() => r,
                _ = self.listening.wait_for(|l| !*l) => continue,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let (kill_tx, kill_rx) = watch::channel(false);
                    let kill = Arc::new(kill_tx);
                    let shutdown = self.shutdown.clone();
                    let mut cut = self.cut.clone();
                    cut.borrow_and_update();
                    let dead = Box::pin(async move {
                        tokio::select! {
                            _ = flipped(kill_rx) => {}
                            _ = flipped(shutdown) => {}
                            r = cut.changed() => if r.is_err() {
                                std::future::pending::<()>().await;
                            },
                        }
                    });
                    let tag = ConnTag { remote, kill };
                    return (
                        KillStream {
                            inner: stream,
                            dead,
                            is_dead: false,
                        },
                        tag,
                    );
                }
                Err(e) => {
                    // Out of fds or a reset before accept: back off briefly, as axum does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnTag> {
        let (kill, _) = watch::channel(false);
        Ok(ConnTag {
            remote: self.addr,
            kill: Arc::new(kill),
        })
    }
}

impl Connected<IncomingStream<'_, KillListener>> for ConnTag {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for KillStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
