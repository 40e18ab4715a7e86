//! Any bytes a broker hands us must decode to an envelope or a typed error, never a panic, and
//! whatever decodes must survive a second encode/decode trip unchanged.
#![no_main]

use hubbus::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode_slice(data) {
        assert!(envelope.encoded_len() <= data.len());
        let frame = envelope.encode().expect("what decoded can be framed again");
        let again = Envelope::decode(frame).expect("re-encoded frame decodes");
        assert_eq!(again, envelope);
    }
});
