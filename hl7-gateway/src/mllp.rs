//! MLLP framing (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol"):
//! `<SB=0x0B> message <EB=0x1C><CR=0x0D>`.
//!
//! [`MllpDecoder`] turns a byte stream into events; it owns no socket and
//! does no I/O, so every case (garbage, interrupted frames, size limit) is
//! tested without one. It is lenient where senders differ and it costs
//! nothing: CR/LF/space between frames are ignored silently, a missing CR
//! after EB is accepted, a start block inside a frame starts a new frame (the
//! interrupted one is dropped and reported).

use bytes::{Buf, Bytes, BytesMut};

/// Start block.
pub const START_BLOCK: u8 = 0x0B;
/// End block.
pub const END_BLOCK: u8 = 0x1C;
/// The carriage return that follows the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// Wrap one message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpEvent {
    /// One complete message (the bytes between SB and EB).
    Frame(Bytes),
    /// This many bytes outside any frame were discarded (whitespace between
    /// frames is not counted).
    Garbage(usize),
    /// A frame of this many bytes was interrupted by a new start block and
    /// dropped; the new frame is being read.
    Interrupted(usize),
    /// A frame grew past the limit; these are its first `limit` bytes. The
    /// decoder is done with the stream: answer and close.
    TooLarge(Bytes),
}

/// Incremental MLLP decoder.
#[derive(Debug)]
pub struct MllpDecoder {
    max_frame: usize,
    in_frame: bool,
    /// Bytes of the current frame already searched for EB/SB.
    scanned: usize,
    overflowed: bool,
}

fn is_filler(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | b'\t')
}

impl MllpDecoder {
    pub fn new(max_frame: usize) -> Self {
        MllpDecoder {
            max_frame,
            in_frame: false,
            scanned: 0,
            overflowed: false,
        }
    }

    /// Whether a frame has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// The next event from `buf`, consuming what it used; `None` when more
    /// bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<MllpEvent> {
        if self.overflowed {
            buf.clear();
            return None;
        }
        if !self.in_frame {
            match buf.iter().position(|&b| b == START_BLOCK) {
                Some(i) => {
                    let garbage = buf[..i].iter().filter(|&&b| !is_filler(b)).count();
                    buf.advance(i + 1);
                    self.in_frame = true;
                    self.scanned = 0;
                    if garbage > 0 {
                        return Some(MllpEvent::Garbage(garbage));
                    }
                }
                None => {
                    let garbage = buf.iter().filter(|&&b| !is_filler(b)).count();
                    buf.clear();
                    return (garbage > 0).then_some(MllpEvent::Garbage(garbage));
                }
            }
        }
        let found = buf[self.scanned..]
            .iter()
            .position(|&b| b == END_BLOCK || b == START_BLOCK)
            .map(|j| self.scanned + j);
        match found {
            Some(k) if k <= self.max_frame => {
                if buf[k] == START_BLOCK {
                    buf.advance(k + 1);
                    self.scanned = 0;
                    return Some(MllpEvent::Interrupted(k));
                }
                let message = buf.split_to(k).freeze();
                buf.advance(1);
                self.in_frame = false;
                Some(MllpEvent::Frame(message))
            }
            Some(_) => Some(self.overflow(buf)),
            None if buf.len() > self.max_frame => Some(self.overflow(buf)),
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }

    fn overflow(&mut self, buf: &mut BytesMut) -> MllpEvent {
        let head = buf.split_to(self.max_frame).freeze();
        buf.clear();
        self.in_frame = false;
        self.overflowed = true;
        MllpEvent::TooLarge(head)
    }

    /// At the end of the stream: the size of a frame that was never closed.
    pub fn unfinished(&self, buf: &BytesMut) -> Option<usize> {
        self.in_frame.then_some(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(decoder: &mut MllpDecoder, input: &[u8]) -> Vec<MllpEvent> {
        let mut buf = BytesMut::from(input);
        std::iter::from_fn(|| decoder.decode(&mut buf)).collect()
    }

    #[test]
    fn frames_garbage_and_interruptions() {
        let mut d = MllpDecoder::new(100);
        let mut input = b"junk\r\n".to_vec();
        input.extend(frame(b"ONE"));
        input.extend(b"\r\n");
        input.extend(b"\x0bHALF");
        input.extend(frame(b"TWO"));
        input.extend(b"\x0bTHREE\x1c"); // no CR after EB
        input.extend(b"\x0bFOU");
        let got = events(&mut d, &input);
        assert_eq!(
            got,
            vec![
                MllpEvent::Garbage(4),
                MllpEvent::Frame(Bytes::from_static(b"ONE")),
                MllpEvent::Interrupted(4),
                MllpEvent::Frame(Bytes::from_static(b"TWO")),
                MllpEvent::Frame(Bytes::from_static(b"THREE")),
            ]
        );
        assert!(d.in_frame());
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut input = frame(b"MSH|^~\\&|A");
        input.extend(frame(b"MSH|^~\\&|B"));
        let mut d = MllpDecoder::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &input {
            buf.extend_from_slice(&[b]);
            while let Some(e) = d.decode(&mut buf) {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], MllpEvent::Frame(Bytes::from_static(b"MSH|^~\\&|B")));
    }

    #[test]
    fn size_limit() {
        let mut d = MllpDecoder::new(8);
        let mut buf = BytesMut::from(&b"\x0b0123456789"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(MllpEvent::TooLarge(Bytes::from_static(b"01234567")))
        );
        buf.extend_from_slice(b"\x1c\r");
        assert_eq!(d.decode(&mut buf), None);
        // exactly at the limit is fine
        let mut d = MllpDecoder::new(8);
        let mut buf = BytesMut::from(&frame(b"01234567")[..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(MllpEvent::Frame(Bytes::from_static(b"01234567")))
        );
    }
}
