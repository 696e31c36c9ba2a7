//! The agent's client, shared by the plugin and the CLI: one request, an
//! acknowledgement, one response. Every wait is bounded, so a stopped,
//! wedged or impostor socket costs the runtime seconds, never a hang.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use muslin_model::api::{Accepted, Request, Response};
use socket2::{Domain, SockAddr, Socket, Type};

/// How long a live agent may take to accept the connection and to
/// acknowledge the request: it does both before any real work, so only a
/// wedged agent, or something that is not the agent, takes longer.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Long enough for an ADD queued behind many others; short enough that a
/// wedged agent does not hang the runtime forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum ClientError {
    /// The agent did not take the request: it is not there, or it never
    /// acknowledged the request. Nothing was done; retrying is safe.
    Unreachable(String),
    /// The agent took the request but the exchange failed part-way.
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
/// fails at once (ENOENT or ECONNREFUSED); one that is not served fails
/// after [`ACK_TIMEOUT`].
pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let s = connect(socket)?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    send(&s, socket, &line)?;
    let mut reader = BufReader::new(&s);
    let first = read_line(&mut reader).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => not_acknowledged(socket),
        _ => exchange(socket, e),
    })?;
    if serde_json::from_str::<Accepted>(&first).is_err() {
        // Refused before it was parsed (an error), or an agent that
        // predates acknowledgements: either way, this is the answer.
        return parse(socket, &first);
    }
    s.set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| exchange(socket, e))?;
    let reply = read_line(&mut reader).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Exchange(format!(
            "the Muslin agent at {} acknowledged the request but sent no result within {} s",
            socket.display(),
            REPLY_TIMEOUT.as_secs()
        )),
        _ => exchange(socket, e),
    })?;
    parse(socket, &reply)
}

/// Connects with a bounded wait: a listener that stopped accepting blocks
/// `connect` once its backlog is full, and for Unix sockets the send
/// timeout is what bounds that wait.
fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let unreachable = |e: std::io::Error| {
        ClientError::Unreachable(format!(
            "the Muslin agent is not reachable at {}: {e} (is `muslin agent` running?)",
            socket.display()
        ))
    };
    let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(unreachable)?;
    s.set_write_timeout(Some(ACK_TIMEOUT))
        .map_err(unreachable)?;
    s.set_read_timeout(Some(ACK_TIMEOUT)).map_err(unreachable)?;
    let addr = SockAddr::unix(socket).map_err(unreachable)?;
    match s.connect(&addr) {
        Ok(()) => Ok(UnixStream::from(OwnedFd::from(s))),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ClientError::Unreachable(format!(
            "the Muslin agent at {} did not accept the connection within {} s: its \
             backlog is full (is `muslin agent` wedged?)",
            socket.display(),
            ACK_TIMEOUT.as_secs()
        ))),
        Err(e) => Err(unreachable(e)),
    }
}

fn send(mut s: &UnixStream, socket: &Path, line: &[u8]) -> Result<(), ClientError> {
    match s.write_all(line) {
        Ok(()) => Ok(()),
        // An agent that refuses an over-size request answers and closes
        // without reading the rest; its answer is still there to read.
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(not_acknowledged(socket))
        }
        Err(e) => Err(exchange(socket, e)),
    }
}

/// One line; end of stream before it is an error, not an empty answer.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering",
        ));
    }
    Ok(line)
}

fn parse(socket: &Path, line: &str) -> Result<Response, ClientError> {
    serde_json::from_str(line).map_err(|e| {
        ClientError::Exchange(format!(
            "unreadable reply from the Muslin agent at {}: {e}",
            socket.display()
        ))
    })
}

fn not_acknowledged(socket: &Path) -> ClientError {
    ClientError::Unreachable(format!(
        "the Muslin agent at {} accepted the connection but did not acknowledge the \
         request within {} s (is `muslin agent` wedged, or is something else listening there?)",
        socket.display(),
        ACK_TIMEOUT.as_secs()
    ))
}

fn exchange(socket: &Path, e: std::io::Error) -> ClientError {
    ClientError::Exchange(format!(
        "talking to the Muslin agent at {}: {e}",
        socket.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    fn temp_socket(tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("muslin-client-{}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_listener_that_never_accepts_is_unreachable_within_seconds() {
        let path = temp_socket("backlog");
        let l = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        l.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        // Backlog 0: one connection waits in the queue, the next blocks.
        l.listen(0).unwrap();
        let _first = UnixStream::connect(&path).unwrap();
        let t = Instant::now();
        let e = call(&path, &Request::Status).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
        assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn acknowledgement_then_result_and_a_direct_error_are_both_answers() {
        let path = temp_socket("ack");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [
                "{\"kind\":\"accepted\"}\n{\"kind\":\"done\"}\n",
                "{\"kind\":\"error\",\"code\":7,\"msg\":\"too large\"}\n",
            ] {
                let (mut c, _) = l.accept().unwrap();
                let mut req = String::new();
                BufReader::new(&c).read_line(&mut req).unwrap();
                c.write_all(reply.as_bytes()).unwrap();
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest);
            }
        });
        assert_eq!(call(&path, &Request::Status).unwrap(), Response::Done);
        match call(&path, &Request::Status).unwrap() {
            Response::Error(e) => assert_eq!(e.code, 7),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
