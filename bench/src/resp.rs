//! A minimal Redis client (RESP2) for the side-by-side benchmark: commands go out as arrays of
//! bulk strings, several may be pipelined, and replies are parsed back.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A parsed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// One connection to a Redis server.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
}

/// The largest bulk string or array accepted, so a wrong peer cannot make us allocate without
/// bound.
const MAX_LEN: usize = 64 * 1024 * 1024;

impl Conn {
    /// # Errors
    /// The connection fails.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
        })
    }

    /// Queues one command; it is sent by the next [`Conn::finish`].
    pub async fn queue(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.writer
            .write_all(format!("*{}\r\n", args.len()).as_bytes())
            .await?;
        for a in args {
            self.writer
                .write_all(format!("${}\r\n", a.len()).as_bytes())
                .await?;
            self.writer.write_all(a).await?;
            self.writer.write_all(b"\r\n").await?;
        }
        Ok(())
    }

    /// Sends the queued commands and reads `n` replies.
    ///
    /// # Errors
    /// The connection fails or the server sends something that is not RESP.
    pub async fn finish(&mut self, n: usize) -> io::Result<Vec<Value>> {
        self.writer.flush().await?;
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(read_value(&mut self.reader).await?);
        }
        Ok(replies)
    }

    /// Sends one command and reads its reply.
    ///
    /// # Errors
    /// The connection fails or the server sends something that is not RESP.
    pub async fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        self.queue(args).await?;
        let mut v = self.finish(1).await?;
        v.pop().ok_or_else(|| io::Error::other("no reply"))
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

async fn read_line(r: &mut BufReader<OwnedReadHalf>) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    line.truncate(line.trim_end_matches("\r\n").len());
    Ok(line)
}

fn length(s: &str) -> io::Result<Option<usize>> {
    let n: i64 = s.parse().map_err(|_| bad("bad length"))?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_LEN => Ok(Some(n)),
        Ok(_) => Err(bad("length too large")),
        Err(_) => Ok(None),
    }
}

fn read_value(
    r: &mut BufReader<OwnedReadHalf>,
) -> std::pin::Pin<Box<dyn Future<Output = io::Result<Value>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty line"))?;
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Int(rest.parse().map_err(|_| bad("bad integer"))?),
            "$" => match length(rest)? {
                None => Value::Bulk(None),
                Some(n) => {
                    let mut buf = vec![0; n + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(n);
                    Value::Bulk(Some(buf))
                }
            },
            "*" => match length(rest)? {
                None => Value::Array(None),
                Some(n) => {
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(read_value(r).await?);
                    }
                    Value::Array(Some(items))
                }
            },
            _ => return Err(bad("unknown reply type")),
        })
    })
}
