//! The fake Redis reads whatever a client sends through `CommandDecoder`. Any bytes, arriving
//! in any chunks, must decode to commands or a `ProtocolError`, never a panic; every command
//! must respect the limits; and how the bytes were split must not change what comes out, since
//! a TCP stream can split them anywhere.
#![no_main]

use bytes::{Bytes, BytesMut};
use hubbus_sim::resp::{CommandDecoder, Limits, ProtocolError};
use libfuzzer_sys::fuzz_target;

/// Commands decoded until the input ran out or the first error.
type Outcome = (Vec<Vec<Bytes>>, Option<ProtocolError>);

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let Some((&chunking, input)) = rest.split_first() else {
        return;
    };
    // Small limits half of the time, so that every bound is reached by short inputs.
    let limits = if setup & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bulk_len: usize::from(setup >> 1 & 0x0f),
            max_array_len: 1 + usize::from(setup >> 5),
            max_inline_len: 1 + usize::from(setup >> 1 & 0x1f),
            max_command_len: 8 + usize::from(setup),
        }
    };
    let whole = decode(limits, &[input]);
    let chunk = 1 + usize::from(chunking % 16);
    let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
    let split = decode(limits, &pieces);
    assert_eq!(
        whole, split,
        "the split into chunks of {chunk} changed the outcome"
    );
    for command in &whole.0 {
        assert!(!command.is_empty(), "empty commands are skipped");
        assert!(command.len() <= limits.max_array_len.max(limits.max_inline_len));
        for arg in command {
            assert!(arg.len() <= limits.max_bulk_len.max(limits.max_inline_len));
        }
    }
});

/// Feeds `pieces` one after another, decoding everything complete after each.
fn decode(limits: Limits, pieces: &[&[u8]]) -> Outcome {
    let mut decoder = CommandDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => break,
                Err(error) => return (commands, Some(error)),
            }
        }
    }
    (commands, None)
}
