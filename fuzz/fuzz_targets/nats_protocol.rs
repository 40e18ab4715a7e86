//! Any bytes a NATS server (or something posing as one) sends, split anywhere, must parse to
//! operations or a typed error, never a panic; header blocks likewise. Every operation that
//! parses must survive being written again and parsed a second time unchanged.
#![no_main]

use bytes::BytesMut;
use hubbus::backend::nats::wire::protocol::{HeaderBlock, Parser, ServerOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte sets how the rest is cut: pieces that grow and shrink with it, so one
    // input exercises many split points.
    let Some((&shape, mut bytes)) = data.split_first() else {
        return;
    };
    let mut parser = Parser::new();
    let mut piece = usize::from(shape % 17) + 1;
    while !bytes.is_empty() {
        let (now, rest) = bytes.split_at(piece.min(bytes.len()));
        bytes = rest;
        piece = (piece * 7 + usize::from(shape)) % 61 + 1;
        parser.push(now);
        loop {
            match parser.next_op() {
                Ok(Some(op)) => check(op),
                Ok(None) => break,
                Err(_) => {
                    assert!(parser.next_op().is_err(), "an error sticks");
                    return;
                }
            }
        }
    }
});

fn check(op: ServerOp) {
    if let ServerOp::Msg(msg) = &op
        && let Some(headers) = &msg.headers
    {
        // A malformed block is a typed error; either outcome is fine.
        let _outcome = HeaderBlock::parse(headers);
    }
    let mut again = BytesMut::new();
    op.encode(&mut again);
    let mut parser = Parser::new();
    parser.push(&again);
    assert_eq!(parser.next_op(), Ok(Some(op)), "written again, it parses the same");
    assert_eq!(parser.next_op(), Ok(None));
}
