//! Where a daemon listens or connects: `unix:PATH`, `tcp:HOST:PORT` or a bare `HOST:PORT`.
//! Owns the one stream type the data path speaks over, so the protocol code is written once
//! for both transports.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, thiserror::Error)]
#[error("address {0:?} is neither unix:PATH nor [tcp:]HOST:PORT")]
pub struct BadAddress(String);

impl FromStr for Address {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(BadAddress(s.to_owned()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("tcp:").unwrap_or(s);
        if hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            Ok(Address::Tcp(hostport.to_owned()))
        } else {
            Err(BadAddress(s.to_owned()))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A connected byte stream over either transport.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub async fn connect(addr: &Address) -> std::io::Result<Stream> {
        match addr {
            Address::Unix(p) => {
                let s = UnixStream::connect(p).await?;
                widen_send_buffer(&s);
                Ok(Stream::Unix(s))
            }
            Address::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Send buffer asked for on a unix socket: a 1 MiB write frame (or read reply) fits
/// whole, so the sender hands it over in one call instead of trading 200 KiB pieces with
/// the reader, a context switch each. Capped by the kernel at `net.core.wmem_max`.
const UNIX_SEND_BUFFER: libc::c_int = 4 << 20;

/// Asks for a larger send buffer on a unix stream; best effort (a smaller one only
/// costs speed). TCP is left to the kernel's autotuning.
fn widen_send_buffer(s: &UnixStream) {
    use std::os::fd::AsRawFd;
    let bytes = UNIX_SEND_BUFFER;
    // SAFETY: a valid socket fd and a c_int option value of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A connected stream detached from any runtime, to be moved to another one
/// ([`Stream::detach`], [`Stream::attach`]).
pub enum DetachedStream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    /// Takes the socket out of the runtime that accepted or connected it.
    pub fn detach(self) -> std::io::Result<DetachedStream> {
        Ok(match self {
            Stream::Unix(s) => DetachedStream::Unix(s.into_std()?),
            Stream::Tcp(s) => DetachedStream::Tcp(s.into_std()?),
        })
    }

    /// Registers a detached socket with the runtime of the calling task.
    pub fn attach(s: DetachedStream) -> std::io::Result<Stream> {
        Ok(match s {
            DetachedStream::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
            DetachedStream::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
        })
    }

    /// Splits into owned halves so reads and writes run in separate tasks.
    pub fn into_split(
        self,
    ) -> (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) {
        match self {
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// A bound listener on either transport. A unix socket path left by a dead process is
/// removed before binding.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    pub async fn bind(addr: &Address) -> std::io::Result<Listener> {
        match addr {
            Address::Unix(p) => {
                if p.exists() {
                    std::fs::remove_file(p)?;
                }
                Ok(Listener::Unix(UnixListener::bind(p)?, p.clone()))
            }
            Address::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a.as_str()).await?)),
        }
    }

    /// Accepts one connection; returns the stream and a printable peer name.
    pub async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Unix(l, p) => {
                let (s, _) = l.accept().await?;
                widen_send_buffer(&s);
                Ok((Stream::Unix(s), format!("unix:{}", p.display())))
            }
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "unix:/tmp/a".parse::<Address>().unwrap(),
            Address::Unix("/tmp/a".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:9".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:9".into())
        );
        assert_eq!(
            "127.0.0.1:9".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:9".into())
        );
        assert!("nonsense".parse::<Address>().is_err());
    }
}
