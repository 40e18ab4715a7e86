//! One client connection: a reader task that decodes and runs operations and keeps the
//! session's timers, and a writer task that drains the connection's outgoing queue into the
//! socket.
//!
//! Two tasks, because a subscriber's socket is written to by other connections' publishes as
//! well as by the server's replies to its own operations; the queue between them is where order
//! is fixed and the byte limit enforced. Both halves honour the wedge switch: while it is on,
//! nothing is run, no timer acts and nothing is written, yet the socket stays open, so the
//! client sees silence rather than an error.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use turmoil::net::TcpStream;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::control::Controls;
use super::host::Host;
use super::outbox::Outbox;
use super::protocol::Decoder;
use super::session::{Flow, Session};

/// How many bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 4096;

/// Serves one accepted connection until it ends.
pub(super) async fn run(stream: TcpStream, peer: SocketAddr, host: Rc<Host>) {
    let (mut reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::new(host.config.max_pending));
    let kill = Arc::new(Notify::new());
    let client_ip = peer.ip().to_string();
    let id = host
        .registry
        .register(Arc::clone(&outbox), Arc::clone(&kill), client_ip.clone());
    let writer = tokio::task::spawn_local(write_loop(
        writer,
        Arc::clone(&outbox),
        Arc::clone(&host.controls),
        Arc::clone(&kill),
    ));
    let mut session = Session::new(
        Rc::clone(&host),
        id,
        Arc::clone(&outbox),
        client_ip,
        Instant::now(),
    );
    let end = match session.greet() {
        Flow::Continue => read_loop(&mut reader, &mut session, &host, &kill).await,
        flow => flow,
    };
    host.registry.deregister(id);
    // Nothing more is queued; the writer drains what is and stops, which closes the socket
    // after the last line (an `-ERR`, say).
    outbox.close();
    match end {
        Flow::Kill => writer.abort(),
        Flow::Close | Flow::Continue => {
            if let Err(error) = writer.await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }
}

/// Runs `work` unless the connection is killed first.
async fn unless_killed<F: Future>(kill: &Notify, work: F) -> Option<F::Output> {
    tokio::select! {
        // Biased: tokio's default random branch choice would make runs irreproducible.
        biased;
        () = kill.notified() => None,
        output = work => Some(output),
    }
}

async fn read_loop(
    reader: &mut OwnedReadHalf,
    session: &mut Session,
    host: &Host,
    kill: &Notify,
) -> Flow {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Run every complete operation already buffered, then read more.
        loop {
            let decoded = decoder.decode(&mut buf, session.decode_context());
            if matches!(decoded, Ok(None)) {
                break;
            }
            // A wedged server neither runs an operation nor refuses one.
            if unless_killed(kill, host.controls.wedge.until_released())
                .await
                .is_none()
            {
                return Flow::Kill;
            }
            let flow = match decoded {
                Ok(Some(op)) => session.execute(op, Instant::now()),
                Ok(None) => Flow::Continue,
                Err(error) => session.protocol_error(error),
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
        buf.reserve(READ_CHUNK);
        let deadline = session.next_deadline();
        tokio::select! {
            biased;
            () = kill.notified() => return Flow::Kill,
            // Reading before the timers lets a pong that has arrived count before a ping
            // timer judges the connection.
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return Flow::Close,
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                if host.controls.wedge.is_on() {
                    if unless_killed(kill, host.controls.wedge.until_released())
                        .await
                        .is_none()
                    {
                        return Flow::Kill;
                    }
                    session.restart_timers(Instant::now());
                    continue;
                }
                let flow = session.on_timer(Instant::now());
                if flow != Flow::Continue {
                    return flow;
                }
            }
        }
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    controls: Arc<Controls>,
    kill: Arc<Notify>,
) {
    while let Some(batch) = outbox.next_batch().await {
        controls.wedge.until_released().await;
        if writer.write_all(&batch.bytes).await.is_err() {
            // The socket failed: the reader stops too.
            kill.notify_one();
            return;
        }
        outbox.written(batch.bytes.len());
        controls.count_delivered(batch.messages);
    }
}
