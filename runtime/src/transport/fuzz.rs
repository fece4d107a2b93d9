//! Fuzz target body for the frame reassembler of the byte-stream transports (feature
//! `testing`; the cargo-fuzz target `frame_buf` in `fuzz/` calls it, and this crate's
//! tests replay its seed corpus `fuzz/seeds/frame_buf/` through it).

use super::{FrameBuf, TransportError};
use pov_proto::wire::{LEN_PREFIX, MAX_FRAME};

/// What a byte stream amounts to: the frame bodies delivered, whether a bad length
/// prefix ended it, and how many bytes wait for the rest of a frame.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    bad: bool,
    pending: usize,
}

/// Target `frame_buf`: an arbitrary byte stream, cut into arbitrary chunks, through
/// [`FrameBuf`] as TCP feeds it (`feed`) and as the in-memory transport does (`push`
/// then `deliver`), mixed. Never panics, never delivers a frame over
/// [`MAX_FRAME`], and delivers the frames a reference parser finds in the whole stream,
/// whatever the chunking, stopping at the first over-limit length prefix.
///
/// Input: byte 0 gives `n` (`% 33`), the next `n` bytes the chunking (used in turn:
/// `1 + (b >> 2)` bytes, fed by `feed` if `b & 3` is 0 or 1, by `push` + `deliver` if
/// 2, by an empty `feed` then `feed` if 3); the rest is the stream.
pub fn frame_buf(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let (cuts, stream) = rest.split_at((n as usize % 33).min(rest.len()));
    let want = reference(stream);
    assert_eq!(reassemble(stream, &[0xfc]), want, "whole stream (cut in 64-byte feeds)");
    assert_eq!(reassemble(stream, &[0xff]), want, "64-byte chunks with an empty feed before each");
    if !cuts.is_empty() {
        assert_eq!(reassemble(stream, cuts), want, "chunked by {cuts:?}");
    }
    let mut fb = FrameBuf::default();
    let mut got = Vec::new();
    let all = fb.feed(stream, "fuzz", &mut |f| got.push(f.to_vec()));
    assert_eq!((got, all.is_err()), (want.frames, want.bad), "whole stream in one feed");
}

/// Feeds `stream` in the chunks `cuts` describes (see [`frame_buf`]), stopping at the
/// first error as a transport does.
fn reassemble(mut stream: &[u8], cuts: &[u8]) -> Outcome {
    let mut fb = FrameBuf::default();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut bad = false;
    for &c in cuts.iter().cycle() {
        if stream.is_empty() {
            break;
        }
        let (chunk, more) = stream.split_at((1 + (c >> 2) as usize).min(stream.len()));
        stream = more;
        let before = frames.len();
        let mut on_frame = |f: &[u8]| {
            assert!(f.len() <= MAX_FRAME, "frame of {} bytes delivered", f.len());
            frames.push(f.to_vec());
        };
        let r: Result<u64, TransportError> = match c & 3 {
            2 => {
                fb.push(chunk);
                fb.deliver("fuzz", &mut on_frame)
            }
            3 => fb.feed(&[], "fuzz", &mut on_frame).and_then(|n| Ok(n + fb.feed(chunk, "fuzz", &mut on_frame)?)),
            _ => fb.feed(chunk, "fuzz", &mut on_frame),
        };
        match r {
            Ok(n) => assert_eq!(n as usize, frames.len() - before, "frame count returned"),
            Err(TransportError::BadFrame { .. }) => {
                bad = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let pending = if bad { 0 } else { fb.pending_len() };
    Outcome { frames, bad, pending }
}

/// The frames of a whole stream, parsed the obvious way.
fn reference(stream: &[u8]) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.len() < LEN_PREFIX {
            return Outcome { frames, bad: false, pending: rest.len() };
        }
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if n > MAX_FRAME {
            return Outcome { frames, bad: true, pending: 0 };
        }
        if rest.len() < LEN_PREFIX + n {
            return Outcome { frames, bad: false, pending: rest.len() };
        }
        frames.push(rest[LEN_PREFIX..LEN_PREFIX + n].to_vec());
        at += LEN_PREFIX + n;
    }
}

/// Hand-made seeds (see `pov_proto::fuzz::valid_seeds`): streams of a few frames,
/// chunked in several ways, one ending with an over-limit length prefix.
pub fn valid_seeds() -> Vec<Vec<u8>> {
    let mut stream = Vec::new();
    for body in [&b"hello"[..], b"", &[7u8; 300]] {
        stream.extend_from_slice(&(body.len() as u32).to_le_bytes());
        stream.extend_from_slice(body);
    }
    let seed = |cuts: &[u8], tail: &[u8]| [&[cuts.len() as u8][..], cuts, &stream, tail].concat();
    vec![
        seed(&[], &[]),
        seed(&[0, 1, 2, 3, 4, 8, 13], &[]),
        seed(&[0x12, 0x33], &[1, 2]),
        seed(&[0x20], &((MAX_FRAME + 1) as u32).to_le_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpus_replays() {
        assert!(pov_proto::fuzz::replay("frame_buf", frame_buf) > 0);
        for s in valid_seeds() {
            frame_buf(&s);
        }
    }

    #[test]
    #[ignore = "writes fuzz/seeds/: run by hand after a format change"]
    fn write_seeds() {
        pov_proto::fuzz::write_valid_seeds("frame_buf", &valid_seeds());
    }
}
