use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use muslin_model::api::{Request, Response};

/// Long enough for an ADD queued behind many others; short enough that a
/// wedged agent does not hang the runtime forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum ClientError {
    /// The agent is not there: nothing was sent.
    Unreachable(String),
    /// The agent was reached but the exchange failed part-way.
    Exchange(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(s) | ClientError::Exchange(s) => f.write_str(s),
        }
    }
}

/// One request, one response. Connecting to a socket nobody listens on
/// fails at once (ENOENT or ECONNREFUSED), so a stopped agent never hangs
/// the caller.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        ClientError::Unreachable(format!(
            "the Muslin agent is not reachable at {}: {e} (is `muslin agent` running?)",
            socket.display()
        ))
    })?;
    let xerr = |e: std::io::Error| {
        ClientError::Exchange(format!(
            "talking to the Muslin agent at {}: {e}",
            socket.display()
        ))
    };
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(xerr)?;
    s.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(xerr)?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(xerr)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(xerr)?;
    if reply.is_empty() {
        return Err(ClientError::Exchange(format!(
            "the Muslin agent at {} closed the connection without answering",
            socket.display()
        )));
    }
    serde_json::from_str(&reply)
        .map_err(|e| ClientError::Exchange(format!("unreadable reply from the Muslin agent: {e}")))
}
