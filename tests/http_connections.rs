//! Slow and silent clients against the real `serve` (issue 12, "slowloris"): a half-sent request
//! head, a silent connection, an idle keep-alive connection, a dripped body and an HTTP/2
//! connection that opens no stream are all closed by the server within their timeout; the
//! connection cap holds new clients in the backlog until a slot frees; and with a small open-file
//! limit, a crowd of silent connections no longer locks new clients out.
//!
//! Every timing below has seconds of slack over the configured timeouts, and each check fails on
//! a server without them: there the connection simply stays open (read times out) or the new
//! client is never answered.

mod common;

use common::server::Server;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Short timeouts so each case takes seconds.
const FAST: &[&str] = &[
    "--header-read-timeout",
    "1",
    "--body-read-timeout",
    "2",
    "--idle-timeout",
    "2",
];

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    stream
}

/// Reads until the server closes the connection (EOF or reset) and returns how long that took
/// and what it sent; `None` if it is still open after `limit`.
fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return Some((started.elapsed(), received)),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((started.elapsed(), received)),
        }
    }
    None
}

/// Status of a `GET /health` on a fresh connection, or why there was none within `limit`.
fn health_within(server: &Server, limit: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer within {limit:?}: {e}"))?;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad response {:?}", String::from_utf8_lossy(&response)))
}

#[test]
fn slow_silent_and_idle_connections_are_closed() {
    let server = Server::start(FAST, &[]);

    // A request head that never ends (slowloris).
    let mut partial = connect(&server);
    partial
        .write_all(b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        .expect("write");
    // A connection that sends nothing at all.
    let mut silent = connect(&server);
    // A keep-alive connection that goes quiet after one answered request.
    let mut idle = connect(&server);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    // A body that stops after 10 of its 100 bytes.
    let mut dripped = connect(&server);
    dripped
        .write_all(b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\":")
        .expect("write");

    let limit = Duration::from_secs(8);
    let (took, sent) = until_closed(&mut partial, limit).expect("a half-sent head stays open");
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "{sent:?}"
    );
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    until_closed(&mut silent, limit).expect("a silent connection stays open");
    let (_, answered) = until_closed(&mut idle, limit).expect("an idle keep-alive stays open");
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
    let (_, answer) = until_closed(&mut dripped, limit).expect("a dripped body stays open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a timed-out body gets a 4xx or nothing: {answer}"
    );

    // HTTP/2 with prior knowledge: preface and an empty SETTINGS frame, then no stream.
    let mut h2 = connect(&server);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("write");
    let (took, _) =
        until_closed(&mut h2, limit).expect("an HTTP/2 connection with no stream stays open");
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the idle timeout: {took:?}"
    );

    assert_eq!(health_within(&server, Duration::from_secs(5)), Ok(200));
}

#[test]
fn connections_over_the_cap_wait_for_a_free_slot() {
    let server = Server::start(
        &[
            "--max-connections",
            "4",
            "--header-read-timeout",
            "30",
            "--idle-timeout",
            "30",
        ],
        &[],
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    // Make sure all four were accepted (each answers a request and stays open).
    for stream in &mut held {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        let mut buffer = [0u8; 512];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = stream
            .read(&mut buffer)
            .expect("answer on a held connection");
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    }
    // A fifth client connects (the kernel's backlog) but is not served while four are open.
    // The clock starts before the thread does, as the main thread's wait below does: started in
    // the thread, it could start after that wait and read under 1.5 s (CI saw 1.4986 s).
    let started = Instant::now();
    let waiting = std::thread::spawn({
        let port = server.port;
        move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("write");
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            (started.elapsed(), response)
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiting.is_finished(),
        "a fifth connection was served past --max-connections 4"
    );
    drop(held.pop());
    let (took, response) = waiting.join().expect("client thread");
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

#[test]
fn silent_crowd_does_not_lock_out_new_clients_under_a_small_nofile() {
    // `ulimit -n 64`: the cap is fitted below it, and the header-read timeout clears the crowd.
    let server = Server::start_with(FAST, &[], |command| {
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let crowd: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(health_within(&server, Duration::from_secs(8)), Ok(200));
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    drop(crowd);
    let lowered = server
        .drain_logs()
        .iter()
        .any(|line| line.contains("--max-connections lowered"));
    assert!(lowered, "the cap was not fitted to ulimit -n 64");
}
