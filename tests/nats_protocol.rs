//! The wire link's protocol parser, as properties: whatever bytes a server sends, split however
//! the network splits them, the parser returns operations or a typed error and never panics or
//! holds more than one operation's worth; and what the encoders write parses back to the same
//! value.

#![cfg(feature = "nats")]

use bytes::{Bytes, BytesMut};
use hubbus::backend::nats::wire::protocol::{
    HeaderBlock, MAX_CONTROL_LINE, Msg, Parser, ServerInfo, ServerOp,
};
use proptest::prelude::*;

/// A subject as servers send them: no whitespace, no control characters.
fn subject() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_$>*.-]{1,40}"
}

fn header_block() -> impl Strategy<Value = HeaderBlock> {
    (
        prop::option::of(100u16..=999),
        // Values are read back trimmed, so generated ones have no blanks at their ends.
        prop::option::of("[A-Za-z0-9]([A-Za-z0-9 ]{0,20}[A-Za-z0-9])?"),
        prop::collection::vec(
            (
                "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}",
                "([\\x21-\\x7e]([\\x20-\\x7e]{0,30}[\\x21-\\x7e])?)?",
            ),
            0..5,
        ),
    )
        .prop_map(|(status, description, headers)| HeaderBlock {
            status,
            description: status.and(description),
            headers,
        })
}

fn server_op() -> impl Strategy<Value = ServerOp> {
    let msg = (
        subject(),
        any::<u64>(),
        prop::option::of(subject()),
        prop::option::of(header_block()),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(subject, sid, reply, headers, payload)| {
            ServerOp::Msg(Msg {
                subject,
                sid,
                reply,
                headers: headers.map(|block| block.encode().expect("generated blocks encode")),
                payload: Bytes::from(payload),
            })
        });
    let info = (
        "[A-Za-z0-9]{0,20}",
        "[0-9.]{0,10}",
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec("nats://[a-z0-9.]{1,10}:[0-9]{1,5}", 0..3),
    )
        .prop_map(
            |(server_id, version, max_payload, headers, ldm, connect_urls)| {
                ServerOp::Info(Box::new(ServerInfo {
                    server_id,
                    version,
                    max_payload: max_payload as usize,
                    headers,
                    lame_duck_mode: ldm,
                    connect_urls,
                    ..ServerInfo::default()
                }))
            },
        );
    prop_oneof![
        msg,
        info,
        Just(ServerOp::Ping),
        Just(ServerOp::Pong),
        Just(ServerOp::Ok),
        "[A-Za-z0-9]([A-Za-z0-9 \"]{0,40}[A-Za-z0-9\"])?".prop_map(ServerOp::Err),
    ]
}

/// Cut points to split a byte stream at.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..4096, 0..16)
}

/// Feeds `bytes` cut at `cuts`, collecting operations until an error.
fn feed(bytes: &[u8], cuts: &[usize]) -> Result<Vec<ServerOp>, ()> {
    let mut parser = Parser::new();
    let mut ops = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut from = 0;
    for cut in cuts {
        parser.push(&bytes[from..cut]);
        from = cut;
        loop {
            match parser.next_op() {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(_) => return Err(()),
            }
        }
    }
    Ok(ops)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_in_arbitrary_pieces_never_panic_and_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in cuts(),
    ) {
        let mut parser = Parser::new();
        let mut from = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        for cut in cuts {
            parser.push(&bytes[from..cut]);
            from = cut;
            while let Ok(Some(_)) = parser.next_op() {}
            prop_assert!(parser.buffered() <= bytes.len().max(MAX_CONTROL_LINE + 2));
        }
    }

    #[test]
    fn protocol_shaped_garbage_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                "(MSG|HMSG|msg|INFO|PING|PONG|\\+OK|-ERR)( [ -~]{0,24}){0,6}\r\n",
                "[ -~]{0,40}\r?\n?",
            ],
            0..12,
        ),
        cuts in cuts(),
    ) {
        let bytes: Vec<u8> = lines.concat().into_bytes();
        // Operations or an error are both fine here; a panic is not.
        let _outcome = feed(&bytes, &cuts);
    }

    #[test]
    fn what_a_server_writes_parses_back_however_it_is_split(
        ops in prop::collection::vec(server_op(), 1..8),
        cuts in cuts(),
    ) {
        let mut bytes = BytesMut::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        prop_assert_eq!(feed(&bytes, &cuts), Ok(ops));
    }

    #[test]
    fn header_blocks_round_trip(block in header_block()) {
        let bytes = block.encode().unwrap();
        prop_assert_eq!(HeaderBlock::parse(&bytes), Ok(block));
    }

    #[test]
    fn arbitrary_header_blocks_are_read_or_refused_never_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _outcome = HeaderBlock::parse(&bytes);
    }
}
