//! One client connection: a reader task that decodes and executes commands, and a writer task
//! that drains the connection's outgoing queue into the socket.
//!
//! Two tasks, because a subscriber's socket is written to by other connections' publishes as
//! well as by its own replies; the queue between them is where order is fixed and where the
//! bound is enforced. Both halves honour the wedge switch: while it is on, nothing is executed
//! and nothing is written, yet the socket stays open, so the client sees silence rather than an
//! error.

use std::future::Future;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use turmoil::net::TcpStream;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::registry::{ConnId, Outgoing};
use super::session::Session;
use super::{Controls, Dialect, Server};
use crate::resp::{CommandDecoder, Frame, Limits};

/// How many bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 4096;

/// How a connection's reader stopped.
enum HowItEnded {
    /// The client quit or hung up, or spoke garbage: flush what is queued, then close.
    Graceful,
    /// Disconnected for being too slow: close at once, dropping what is queued.
    Killed,
}

/// Serves one accepted connection until it ends.
pub(super) async fn run<D: Dialect>(stream: TcpStream, server: Arc<Server<D>>) {
    let (mut reader, writer) = stream.into_split();
    let (outbox, queue) = mpsc::channel(server.config.outgoing_queue.max(1));
    let kill = Arc::new(Notify::new());
    let id = server.pubsub.register(outbox.clone(), Arc::clone(&kill));
    let controls = Arc::clone(server.pubsub.controls());
    let writer = tokio::spawn(write_loop(writer, queue, controls));
    let end = read_loop(&mut reader, &outbox, &server, id, &kill).await;
    server.pubsub.deregister(id);
    // With the pubsub's and this sender gone, the writer drains the queue and stops, which closes
    // the socket after the last reply (a protocol error's, or QUIT's +OK).
    drop(outbox);
    match end {
        HowItEnded::Graceful => {
            let _ = writer.await;
        }
        HowItEnded::Killed => writer.abort(),
    }
}

/// Runs `work` unless the connection is disconnected first.
async fn unless_killed<F: Future>(kill: &Notify, work: F) -> Option<F::Output> {
    tokio::select! {
        // Biased: tokio's default random branch choice would make runs irreproducible.
        biased;
        () = kill.notified() => None,
        output = work => Some(output),
    }
}

async fn read_loop<D: Dialect>(
    reader: &mut OwnedReadHalf,
    outbox: &mpsc::Sender<Outgoing>,
    server: &Server<D>,
    id: ConnId,
    kill: &Notify,
) -> HowItEnded {
    let mut session = Session::new(server, id);
    let mut decoder = CommandDecoder::new(Limits::default());
    let controls = Arc::clone(server.pubsub.controls());
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Execute every complete command already buffered (a pipeline), then read more.
        loop {
            let (frames, close) = match decoder.decode(&mut buf) {
                Ok(Some(command)) => {
                    if unless_killed(kill, controls.until_unwedged())
                        .await
                        .is_none()
                    {
                        return HowItEnded::Killed;
                    }
                    let response = session.execute(&command);
                    (response.frames, response.close)
                }
                Ok(None) => break,
                // As Redis does: answer, then close, since the stream cannot be resynchronised.
                Err(error) => (
                    vec![Frame::error(format!("ERR Protocol error: {error}"))],
                    true,
                ),
            };
            // All replies of one command (SUBSCRIBE a b c) take one queue slot.
            let mut bytes = BytesMut::new();
            for frame in &frames {
                frame.encode(&mut bytes);
            }
            match unless_killed(kill, outbox.send(Outgoing::Reply(bytes.freeze()))).await {
                None => return HowItEnded::Killed,
                // The writer is gone: the socket failed.
                Some(Err(_)) => return HowItEnded::Graceful,
                Some(Ok(())) if close => return HowItEnded::Graceful,
                Some(Ok(())) => {}
            }
        }
        buf.reserve(READ_CHUNK);
        match unless_killed(kill, reader.read_buf(&mut buf)).await {
            None => return HowItEnded::Killed,
            Some(Ok(0) | Err(_)) => return HowItEnded::Graceful,
            Some(Ok(_)) => {}
        }
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    controls: Arc<Controls>,
) {
    while let Some(outgoing) = queue.recv().await {
        controls.until_unwedged().await;
        let (bytes, is_message) = match &outgoing {
            Outgoing::Reply(bytes) => (bytes, false),
            Outgoing::Message(bytes) => (bytes, true),
        };
        if writer.write_all(bytes).await.is_err() {
            return;
        }
        if is_message {
            Controls::bump(&controls.delivered);
        }
    }
}
