//! WebSocket frame tracking: `wsgate::frames::FrameTracker` fed a byte stream cut at
//! arbitrary points, against a simple whole-buffer reference parse written here.
//!
//! The input picks a direction, deflate, a message limit, whether a pong is expected, the
//! cut points, and then either a raw byte stream (garbage welcome) or a sequence of frame
//! specs serialised here (any opcode, RSV bits, masking right or wrong, minimal or padded
//! length encodings, lengths at the 125/126 and 65535/65536 edges).
//!
//! Invariants: never panics; the streaming tracker's events, offsets made absolute, equal
//! the reference's; `Untrackable` comes at most once and last; after the whole stream the
//! tracker is at a frame boundary exactly when the reference consumed every byte, and
//! `pending_pong_len` never exceeds a pong frame's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::frames::{
    Direction, Event, FrameStart, FrameTracker, MessageKind, NO_LIMIT, OpCode, Violation,
};

const PONG: [u8; 8] = *b"wsg8ping";
const MAX_STREAM: usize = 400_000;

struct Setup {
    dir: Direction,
    deflate: bool,
    armed: bool,
    limit: u64,
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let setup = Setup {
        dir: if cfg & 1 != 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        },
        deflate: cfg & 2 != 0,
        armed: cfg & 4 != 0,
        limit: match cfg >> 4 {
            15 => NO_LIMIT,
            n => u64::from(n) * 97,
        },
    };
    let Some((&ncuts, rest)) = rest.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts & 0x1F).min(rest.len() / 2);
    let (cut_bytes, rest) = rest.split_at(ncuts * 2);
    let stream = if cfg & 8 != 0 {
        rest.to_vec()
    } else {
        build_frames(&setup, rest)
    };
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) * 7 % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let (want, consumed) = reference(&setup, &stream);
    let (got, t) = streamed(&setup, &stream, &cuts);
    assert_eq!(got, want, "cuts {cuts:?}");
    let (whole, _) = streamed(&setup, &stream, &[]);
    assert_eq!(whole, want);

    let bad = got
        .iter()
        .filter(|e| matches!(e, Event::Untrackable { .. }))
        .count();
    assert!(bad <= 1);
    if bad == 1 {
        assert!(matches!(got.last(), Some(Event::Untrackable { .. })));
        assert!(t.is_untrackable() && !t.at_frame_boundary());
    } else {
        assert_eq!(t.at_frame_boundary(), consumed == stream.len());
    }
    assert!(t.pending_pong_len() <= 14);
});

/// The tracker fed `stream` in the pieces `cuts` makes, with offsets made absolute.
fn streamed(s: &Setup, stream: &[u8], cuts: &[usize]) -> (Vec<Event>, FrameTracker) {
    let mut t = FrameTracker::new(s.dir, s.deflate);
    if s.armed {
        t.expect_pong(&PONG);
    }
    let mut out = Vec::new();
    let mut base = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        t.feed(&stream[base..end], s.limit, &mut |e| {
            out.push(e.shifted(base))
        });
        base = end;
    }
    (out, t)
}

/// Frame specs of 3 bytes each: [opcode/fin, flags, length].
fn build_frames(s: &Setup, spec: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, f) in spec.chunks_exact(3).enumerate() {
        let (a, b, c) = (f[0], f[1], f[2]);
        let op = if a & 0x40 != 0 {
            a & 0x0F
        } else {
            [0u8, 1, 2, 8, 9, 10][usize::from(a & 0x0F) % 6]
        };
        let fin = a & 0x80 == 0 || (op & 0x08 != 0 && a & 0x20 == 0);
        let mut first = op | if fin { 0x80 } else { 0 };
        if b & 0x02 != 0 {
            first |= 0x40;
        }
        if b & 0x0C == 0x0C {
            first |= if b & 0x01 != 0 { 0x20 } else { 0x10 };
        }
        let right_mask = s.dir == Direction::ClientToServer;
        let masked = right_mask != (b & 0x10 != 0 && b & 0x80 == 0);
        let len: u64 = if c < 200 {
            u64::from(c)
        } else {
            [125, 126, 127, 65535, 65536, 0, 300, 1000][usize::from(c - 200) % 8]
        };
        if out.len() as u64 + len + 14 > MAX_STREAM as u64 {
            break;
        }
        out.push(first);
        let mask_bit = if masked { 0x80 } else { 0 };
        match (b >> 5) & 3 {
            // Padded (non-minimal) encodings, which we follow rather than judge.
            1 if len <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            2 => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            _ if len < 126 => out.push(mask_bit | len as u8),
            _ if len <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        let key = [k as u8, a, b, c.wrapping_mul(31)];
        if masked {
            out.extend_from_slice(&key);
        }
        let body = out.len();
        if op == 0xA && len == 8 && b & 0x80 != 0 {
            out.extend_from_slice(&PONG);
        } else if op == 0x8 && len >= 2 {
            out.extend_from_slice(&(1000 + u16::from(c)).to_be_bytes());
            out.extend((2..len).map(|i| b'a' + (i % 26) as u8));
        } else {
            out.extend((0..len).map(|i| (i as u8).wrapping_mul(13) ^ c));
        }
        if masked {
            for (i, x) in out[body..].iter_mut().enumerate() {
                *x ^= key[i % 4];
            }
        }
    }
    out
}

/// A whole-buffer parse of the same rules, written for clarity rather than streaming.
/// Returns the events and how many bytes ended on a frame boundary.
fn reference(s: &Setup, buf: &[u8]) -> (Vec<Event>, usize) {
    let mut ev = Vec::new();
    let mut pos = 0;
    let mut in_msg = false;
    let mut kind = MessageKind::Text;
    let mut compressed = false;
    let mut total: u64 = 0;
    let mut reported = false;
    let mut armed = s.armed;
    let client = s.dir == Direction::ClientToServer;
    let fail = |ev: &mut Vec<Event>, reason, at| ev.push(Event::Untrackable { reason, at });
    while pos < buf.len() {
        let start = pos;
        let b0 = buf[start];
        let (fin, rsv1, rsv23, op) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x30, b0 & 0x0F);
        let control = op >= 8;
        let opcode = match op {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => {
                fail(&mut ev, Violation::ReservedOpcode(op), start);
                return (ev, start);
            }
        };
        let bad0 = if rsv23 != 0 {
            Some(Violation::Rsv2Rsv3)
        } else if rsv1 && !s.deflate {
            Some(Violation::Rsv1WithoutDeflate)
        } else if rsv1 && control {
            Some(Violation::Rsv1OnControl)
        } else if rsv1 && op == 0 {
            Some(Violation::Rsv1OnContinuation)
        } else if control && !fin {
            Some(Violation::FragmentedControl)
        } else if op == 0 && !in_msg {
            Some(Violation::ContinuationWithoutMessage)
        } else if (op == 1 || op == 2) && in_msg {
            Some(Violation::DataInsideMessage)
        } else {
            None
        };
        if let Some(v) = bad0 {
            fail(&mut ev, v, start);
            return (ev, start);
        }
        let Some(&b1) = buf.get(start + 1) else {
            return (ev, start);
        };
        let masked = b1 & 0x80 != 0;
        if masked != client {
            let v = if client {
                Violation::Unmasked
            } else {
                Violation::Masked
            };
            fail(&mut ev, v, start + 1);
            return (ev, start);
        }
        let len7 = b1 & 0x7F;
        if control && len7 > 125 {
            fail(&mut ev, Violation::ControlTooLong, start + 1);
            return (ev, start);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if ext == 8 && buf.get(start + 2).is_some_and(|b| b & 0x80 != 0) {
            fail(&mut ev, Violation::LengthTopBit, start + 2);
            return (ev, start);
        }
        let hl = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < start + hl {
            return (ev, start);
        }
        let len = if ext == 0 {
            u64::from(len7)
        } else {
            buf[start + 2..start + 2 + ext]
                .iter()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        };
        let mut key = [0u8; 4];
        if masked {
            key.copy_from_slice(&buf[start + 2 + ext..start + hl]);
        }
        let payload_at = start + hl;
        ev.push(Event::FrameStart(FrameStart {
            opcode,
            fin,
            rsv: (b0 >> 4) & 7,
            masked,
            payload_len: len,
            header_len: hl as u8,
            payload_at,
        }));
        if !control {
            if op != 0 {
                in_msg = true;
                kind = if op == 2 {
                    MessageKind::Binary
                } else {
                    MessageKind::Text
                };
                compressed = rsv1;
                total = 0;
                reported = false;
            }
            total = total.saturating_add(len);
            if total > s.limit && !reported {
                reported = true;
                ev.push(Event::MessageTooBig {
                    len: total,
                    at: payload_at,
                });
            }
        }
        if ((buf.len() - payload_at) as u64) < len {
            return (ev, start);
        }
        let end = payload_at + len as usize;
        let payload: Vec<u8> = buf[payload_at..end]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        ev.push(Event::FrameEnd { opcode, fin, end });
        match opcode {
            OpCode::Close => ev.push(Event::Close {
                code: (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                start: start as isize,
                end,
            }),
            OpCode::Pong if armed && payload == PONG => {
                armed = false;
                ev.push(Event::Pong {
                    start: start as isize,
                    end,
                });
            }
            OpCode::Ping | OpCode::Pong => {}
            _ if fin => {
                ev.push(Event::MessageEnd {
                    kind,
                    compressed,
                    len: total,
                    end,
                });
                in_msg = false;
            }
            _ => {}
        }
        pos = end;
    }
    (ev, pos)
}
