//! WebSocket (RFC 6455) frame-boundary tracking for one direction of a tunnel, and builders
//! for the frames the gateway injects.
//!
//! The splice forwards bytes unchanged; [`FrameTracker::feed`] watches the same bytes, in
//! whatever chunks they arrive, and reports where frames and messages start and end. It
//! reads only the 2–14 header bytes of each frame and skips payloads by count: no copy, no
//! unmasking, no buffer. The one exception is control frames (at most 125 bytes): the first
//! two bytes of a close payload (the code) and the payload of a pong that may answer the
//! gateway's own ping are unmasked byte by byte as they stream past.
//!
//! Design choices, and why:
//! - **State fits in 32 bytes** (a test asserts it), so the two directions of a tunnel add
//!   at most 64 bytes to an idle tunnel. That is why a header split across reads is parsed
//!   byte by byte into the fields it fills (length into `remaining`, key into `mask`)
//!   instead of being buffered, and why the message-size limit is an argument of `feed`
//!   rather than a field: it is a per-route setting the splice already holds.
//! - **Offsets are relative to the chunk just fed.** A frame whose header began in an
//!   earlier chunk has a negative start (`isize`); every end offset is a position in the
//!   current chunk, so the caller can split the chunk there.
//! - **We judge only what framing needs.** A frame we could mis-measure, or that the peer
//!   must reject (reserved opcode, RSV bits no extension claimed, wrong masking,
//!   fragmentation rules, an oversized or fragmented control frame, a 64-bit length with its
//!   top bit set) makes the tracker [`Untrackable`](Event::Untrackable) for good: the
//!   splice keeps copying bytes, and any later action closes at TCP level. A 16/64-bit
//!   length that is not minimal is **accepted**: RFC 6455 §5.2 says senders MUST use the
//!   minimal form, but the length is still unambiguous, so a lenient receiver (tungstenite,
//!   for one) and this tracker agree on where the frame ends and a strict one fails the
//!   connection itself. Likewise close codes, close payloads of one byte, UTF-8 and data
//!   after a close are the endpoints' business, not the gateway's.
//! - **Cost per frame is O(header bytes).** A payload is skipped with one `min` and two
//!   subtractions, whatever its size.

use bytes::{BufMut, Bytes, BytesMut};

/// Which way the tracked bytes flow; it fixes the masking rule (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: every frame must be masked.
    ClientToServer,
    /// Server to client: no frame may be masked.
    ServerToClient,
}

impl Direction {
    /// The mask an injected frame flowing this way needs: a fresh random key client to
    /// server, none server to client.
    pub fn injected_mask(self) -> Option<[u8; 4]> {
        match self {
            Direction::ClientToServer => Some(random_mask()),
            Direction::ServerToClient => None,
        }
    }
}

/// A frame opcode the tracker accepts (reserved opcodes make it untrackable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a further fragment of the current data message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    fn from_bits(op: u8) -> Option<OpCode> {
        Some(match op {
            OP_CONT => OpCode::Continuation,
            OP_TEXT => OpCode::Text,
            OP_BINARY => OpCode::Binary,
            OP_CLOSE => OpCode::Close,
            OP_PING => OpCode::Ping,
            OP_PONG => OpCode::Pong,
            _ => return None,
        })
    }

    /// True for close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The kind of a data message, fixed by its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Opcode 0x1.
    Text,
    /// Opcode 0x2.
    Binary,
}

/// Why the tracker stopped following a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Opcode 0x3–0x7 or 0xB–0xF (the value is the opcode).
    ReservedOpcode(u8),
    /// RSV2 or RSV3 set: no extension we know of defines them.
    Rsv2Rsv3,
    /// RSV1 set but permessage-deflate was not negotiated.
    Rsv1WithoutDeflate,
    /// RSV1 set on a continuation frame (RFC 7692 §6.1: first frame only).
    Rsv1OnContinuation,
    /// RSV1 set on a control frame (RFC 7692 §6.1).
    Rsv1OnControl,
    /// A control frame with FIN clear (control frames cannot be fragmented).
    FragmentedControl,
    /// A control frame with a payload longer than 125 bytes.
    ControlTooLong,
    /// A 64-bit payload length with its most significant bit set.
    LengthTopBit,
    /// An unmasked frame from the client.
    Unmasked,
    /// A masked frame from the server.
    Masked,
    /// A continuation frame with no fragmented message in progress.
    ContinuationWithoutMessage,
    /// A text or binary frame while a fragmented message is still in progress.
    DataInsideMessage,
}

impl Violation {
    /// A short stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::ReservedOpcode(_) => "reserved_opcode",
            Violation::Rsv2Rsv3 => "rsv2_rsv3",
            Violation::Rsv1WithoutDeflate => "rsv1_without_deflate",
            Violation::Rsv1OnContinuation => "rsv1_on_continuation",
            Violation::Rsv1OnControl => "rsv1_on_control",
            Violation::FragmentedControl => "fragmented_control",
            Violation::ControlTooLong => "control_too_long",
            Violation::LengthTopBit => "length_top_bit",
            Violation::Unmasked => "unmasked",
            Violation::Masked => "masked",
            Violation::ContinuationWithoutMessage => "continuation_without_message",
            Violation::DataInsideMessage => "data_inside_message",
        }
    }
}

/// A frame header, complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStart {
    /// The frame's opcode.
    pub opcode: OpCode,
    /// FIN bit.
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits (RSV1 = 0b100); only RSV1 can be set here.
    pub rsv: u8,
    /// MASK bit.
    pub masked: bool,
    /// Payload length from the header.
    pub payload_len: u64,
    /// Header length, 2 to 14 bytes.
    pub header_len: u8,
    /// Where the payload begins in this chunk; the header began `header_len` bytes
    /// earlier, possibly in an earlier chunk.
    pub payload_at: usize,
}

/// What [`FrameTracker::feed`] reports, in stream order. Offsets are relative to the chunk
/// being fed; `end` offsets are frame boundaries the caller may split the chunk at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A frame header is complete.
    FrameStart(FrameStart),
    /// A frame's last byte is at `end - 1`; `end` is a frame boundary.
    FrameEnd {
        /// The frame's opcode.
        opcode: OpCode,
        /// FIN bit.
        fin: bool,
        /// Offset just past the frame.
        end: usize,
    },
    /// A data message ended with this frame (reported right after its `FrameEnd`).
    MessageEnd {
        /// Text or binary, from the first frame.
        kind: MessageKind,
        /// RSV1 on the first frame (permessage-deflate compressed).
        compressed: bool,
        /// Payload bytes of all its frames, as on the wire (compressed, if it was).
        len: u64,
        /// Offset just past the message's last frame.
        end: usize,
    },
    /// The running payload total of the current data message passed the limit given to
    /// `feed`; reported once per message, at the header that crossed it, before that
    /// frame's payload arrives.
    MessageTooBig {
        /// The running total including the crossing frame's whole declared payload.
        len: u64,
        /// Offset just past the crossing frame's header.
        at: usize,
    },
    /// A close frame ended (reported right after its `FrameEnd`).
    Close {
        /// The status code, or `None` when the payload is shorter than two bytes.
        code: Option<u16>,
        /// Offset of the frame's first header byte (negative: in an earlier chunk).
        start: isize,
        /// Offset just past the frame.
        end: usize,
    },
    /// A pong whose payload equals the one registered with
    /// [`expect_pong`](FrameTracker::expect_pong) ended; the expectation is cleared.
    Pong {
        /// Offset of the frame's first header byte (negative: in an earlier chunk).
        start: isize,
        /// Offset just past the frame.
        end: usize,
    },
    /// Framing can no longer be followed; reported once, and nothing after it.
    Untrackable {
        /// What the stream did.
        reason: Violation,
        /// Offset of the byte that showed it.
        at: usize,
    },
}

impl Event {
    /// The same event with its offsets moved by `base`: offsets relative to the chunk become
    /// offsets in a stream whose chunk started at `base`.
    pub fn shifted(self, base: usize) -> Event {
        let b = base as isize;
        match self {
            Event::FrameStart(mut f) => {
                f.payload_at += base;
                Event::FrameStart(f)
            }
            Event::FrameEnd { opcode, fin, end } => Event::FrameEnd {
                opcode,
                fin,
                end: end + base,
            },
            Event::MessageEnd {
                kind,
                compressed,
                len,
                end,
            } => Event::MessageEnd {
                kind,
                compressed,
                len,
                end: end + base,
            },
            Event::MessageTooBig { len, at } => Event::MessageTooBig { len, at: at + base },
            Event::Close { code, start, end } => Event::Close {
                code,
                start: start + b,
                end: end + base,
            },
            Event::Pong { start, end } => Event::Pong {
                start: start + b,
                end: end + base,
            },
            Event::Untrackable { reason, at } => Event::Untrackable {
                reason,
                at: at + base,
            },
        }
    }
}

/// Pass as `max_message` to [`FrameTracker::feed`] for no message-size limit.
pub const NO_LIMIT: u64 = u64::MAX;

/// Length of the pong payload the tracker can match (the gateway's own pings).
pub const PING_PAYLOAD_LEN: usize = 8;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV23: u8 = 0x30;
const MAX_CONTROL_PAYLOAD: u8 = 125;

// `flags` bits.
const UNTRACKABLE: u8 = 1 << 0;
const DEFLATE: u8 = 1 << 1;
const CLIENT: u8 = 1 << 2;
/// A data message's first frame was seen and its FIN frame has not ended yet.
const IN_MESSAGE: u8 = 1 << 3;
const MSG_BINARY: u8 = 1 << 4;
const MSG_COMPRESSED: u8 = 1 << 5;
const LIMIT_REPORTED: u8 = 1 << 6;
const PONG_ARMED: u8 = 1 << 7;

// `step` layout. Header phase (bit 7 clear): bits 0–3 header bytes consumed, bits 4–5 the
// extended length kind (0 none, 1 16-bit, 2 64-bit), bit 6 MASK. Payload phase (bit 7 set):
// bits 0–6 the payload length of a control frame (0 for data frames).
const PAYLOAD: u8 = 0x80;
const POS: u8 = 0x0F;
const EXT_SHIFT: u8 = 4;
const MASKED: u8 = 0x40;

/// Follows frame boundaries in one direction of a WebSocket connection. 32 bytes.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Header phase: the payload length being assembled. Payload phase: bytes left.
    remaining: u64,
    /// Payload bytes of the current data message so far (saturating).
    message: u64,
    /// The pong payload we expect, when `PONG_ARMED`.
    pong: [u8; PING_PAYLOAD_LEN],
    /// The current frame's masking key (zero when unmasked, so unmasking is a no-op). In a
    /// close frame, bytes 0 and 1 are replaced by the unmasked code bytes once read: the
    /// tracker never unmasks past them, so the key bytes are no longer needed.
    mask: [u8; 4],
    /// The current frame's first header byte (FIN, RSV, opcode).
    head: u8,
    /// See the `step` layout above.
    step: u8,
    /// 1 while the current pong's payload still matches `pong`.
    matching: u8,
    flags: u8,
}

impl FrameTracker {
    /// A tracker for a fresh connection; `deflate` says whether permessage-deflate was
    /// negotiated (it allows RSV1 on the first frame of a data message).
    pub fn new(dir: Direction, deflate: bool) -> Self {
        let mut flags = 0;
        if deflate {
            flags |= DEFLATE;
        }
        if dir == Direction::ClientToServer {
            flags |= CLIENT;
        }
        FrameTracker {
            remaining: 0,
            message: 0,
            pong: [0; PING_PAYLOAD_LEN],
            mask: [0; 4],
            head: 0,
            step: 0,
            matching: 0,
            flags,
        }
    }

    /// A tracker that follows nothing (tracking off for the route): it reports no events,
    /// is never at a frame boundary, and so never lets a frame be injected.
    pub fn off(dir: Direction) -> Self {
        let mut t = FrameTracker::new(dir, false);
        t.flags |= UNTRACKABLE;
        t
    }

    /// The direction given to [`new`](FrameTracker::new).
    pub fn direction(&self) -> Direction {
        if self.flags & CLIENT != 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        }
    }

    /// True between frames (and at the start): a control frame may be injected here.
    /// False once untrackable.
    pub fn at_frame_boundary(&self) -> bool {
        self.step == 0 && self.flags & UNTRACKABLE == 0
    }

    /// True while a fragmented data message is in progress: a data message may be
    /// injected only at a frame boundary where this is false.
    pub fn in_fragmented_message(&self) -> bool {
        self.flags & IN_MESSAGE != 0
    }

    /// True once framing could not be followed (sticky).
    pub fn is_untrackable(&self) -> bool {
        self.flags & UNTRACKABLE != 0
    }

    /// Registers the payload of a ping the gateway sent: the next pong carrying exactly
    /// these bytes is reported as [`Event::Pong`] (once). Replaces any earlier expectation.
    pub fn expect_pong(&mut self, payload: &[u8; PING_PAYLOAD_LEN]) {
        self.pong = *payload;
        self.flags |= PONG_ARMED;
        // A pong already streaming past was measured against the old payload: let it go.
        self.matching = 0;
    }

    /// Forgets the registered ping payload.
    pub fn cancel_pong(&mut self) {
        self.flags &= !PONG_ARMED;
        self.matching = 0;
    }

    /// True while a registered pong is still awaited.
    pub fn pong_expected(&self) -> bool {
        self.flags & PONG_ARMED != 0
    }

    /// Payload bytes left in the current data frame; 0 outside one (in a header, a control
    /// frame, between frames) or once untrackable.
    pub fn data_payload_left(&self) -> u64 {
        if self.flags & UNTRACKABLE == 0 && self.step == PAYLOAD {
            self.remaining
        } else {
            0
        }
    }

    /// Accounts for `n` payload bytes of the current data frame that passed without being
    /// fed (spliced). Only fewer than [`data_payload_left`](Self::data_payload_left) may be
    /// skipped: the frame's last byte is fed, so its end is still reported.
    pub fn skip_payload(&mut self, n: u64) {
        if self.flags & UNTRACKABLE == 0 && self.step == PAYLOAD && n < self.remaining {
            self.remaining -= n;
        }
    }

    /// How many bytes at the end of what was fed so far belong to a frame that may still
    /// turn out to be the expected pong. To drop that pong whole, the splice holds these
    /// bytes back (at most 6 + 8) until a later chunk settles it: [`Event::Pong`] (drop
    /// them) or this returning 0 (forward them).
    pub fn pending_pong_len(&self) -> usize {
        if self.flags & (PONG_ARMED | UNTRACKABLE) != PONG_ARMED || self.head != FIN | OP_PONG {
            return 0;
        }
        if self.step & PAYLOAD == 0 {
            let pos = self.step & POS;
            // Past byte 1 the length is known: it must be 8 in the 7-bit field.
            if pos >= 2 && ((self.step >> EXT_SHIFT) & 3 != 0 || self.remaining != 8) {
                return 0;
            }
            usize::from(pos)
        } else if self.matching == 1 {
            self.control_header_len() + PING_PAYLOAD_LEN - self.remaining as usize
        } else {
            0
        }
    }

    /// Feeds the next bytes of the stream, exactly as they pass, reporting events through
    /// `on`. `max_message` is the data-message size limit in payload bytes
    /// ([`NO_LIMIT`] for none). Does nothing once untrackable.
    pub fn feed(&mut self, chunk: &[u8], max_message: u64, on: &mut impl FnMut(Event)) {
        let mut i = 0;
        while i < chunk.len() {
            if self.flags & UNTRACKABLE != 0 {
                return;
            }
            if self.step & PAYLOAD == 0 {
                let b = chunk[i];
                i += 1;
                self.header_byte(b, i, max_message, on);
                continue;
            }
            let take = self.remaining.min((chunk.len() - i) as u64) as usize;
            let ctl_len = self.step & !PAYLOAD;
            if ctl_len != 0 {
                // Control payloads are at most 125 bytes; only two kinds need reading.
                let pos = usize::from(ctl_len) - self.remaining as usize;
                let op = self.head & 0x0F;
                if op == OP_CLOSE && pos < 2 {
                    for (k, &b) in chunk[i..i + take.min(2 - pos)].iter().enumerate() {
                        self.mask[pos + k] ^= b;
                    }
                } else if op == OP_PONG && self.matching == 1 {
                    for (k, &b) in chunk[i..i + take].iter().enumerate() {
                        let p = pos + k;
                        if b ^ self.mask[p & 3] != self.pong[p] {
                            self.matching = 0;
                            break;
                        }
                    }
                }
            }
            i += take;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.end_frame(i, on);
            }
        }
    }

    /// Takes one header byte; `at` is the offset just past it.
    fn header_byte(&mut self, b: u8, at: usize, max_message: u64, on: &mut impl FnMut(Event)) {
        let pos = self.step & POS;
        match pos {
            0 => {
                if let Err(v) = self.check_first(b) {
                    return self.fail(v, at - 1, on);
                }
                self.head = b;
                self.step = 1;
            }
            1 => {
                let masked = b & 0x80 != 0;
                let client = self.flags & CLIENT != 0;
                if masked != client {
                    let v = if client {
                        Violation::Unmasked
                    } else {
                        Violation::Masked
                    };
                    return self.fail(v, at - 1, on);
                }
                let len7 = b & 0x7F;
                if self.head & 0x08 != 0 && len7 > MAX_CONTROL_PAYLOAD {
                    return self.fail(Violation::ControlTooLong, at - 1, on);
                }
                let ext = match len7 {
                    126 => 1,
                    127 => 2,
                    _ => 0,
                };
                self.remaining = if ext == 0 { u64::from(len7) } else { 0 };
                self.step = 2 | (ext << EXT_SHIFT) | if masked { MASKED } else { 0 };
            }
            _ => {
                let ext_len = ext_bytes(self.step);
                let p = pos - 2;
                if p < ext_len {
                    if ext_len == 8 && p == 0 && b & 0x80 != 0 {
                        return self.fail(Violation::LengthTopBit, at - 1, on);
                    }
                    self.remaining = self.remaining << 8 | u64::from(b);
                } else {
                    self.mask[usize::from(p - ext_len)] = b;
                }
                self.step += 1;
            }
        }
        if self.step & POS == header_len(self.step) {
            self.start_payload(at, max_message, on);
        }
    }

    /// Judges a frame's first byte against the stream so far.
    fn check_first(&self, b: u8) -> Result<(), Violation> {
        let op = b & 0x0F;
        let control = op & 0x08 != 0;
        if OpCode::from_bits(op).is_none() {
            return Err(Violation::ReservedOpcode(op));
        }
        if b & RSV23 != 0 {
            return Err(Violation::Rsv2Rsv3);
        }
        if b & RSV1 != 0 {
            if self.flags & DEFLATE == 0 {
                return Err(Violation::Rsv1WithoutDeflate);
            }
            if control {
                return Err(Violation::Rsv1OnControl);
            }
            if op == OP_CONT {
                return Err(Violation::Rsv1OnContinuation);
            }
        }
        if control {
            if b & FIN == 0 {
                return Err(Violation::FragmentedControl);
            }
        } else if op == OP_CONT {
            if self.flags & IN_MESSAGE == 0 {
                return Err(Violation::ContinuationWithoutMessage);
            }
        } else if self.flags & IN_MESSAGE != 0 {
            return Err(Violation::DataInsideMessage);
        }
        Ok(())
    }

    /// The header is complete at offset `at`: report it and account for the payload.
    fn start_payload(&mut self, at: usize, max_message: u64, on: &mut impl FnMut(Event)) {
        let masked = self.step & MASKED != 0;
        let header_len = self.step & POS;
        if !masked {
            self.mask = [0; 4];
        }
        let op = self.head & 0x0F;
        let Some(opcode) = OpCode::from_bits(op) else {
            // check_first refused every other opcode.
            return self.fail(Violation::ReservedOpcode(op), at, on);
        };
        let len = self.remaining;
        on(Event::FrameStart(FrameStart {
            opcode,
            fin: self.head & FIN != 0,
            rsv: (self.head >> 4) & 0x07,
            masked,
            payload_len: len,
            header_len,
            payload_at: at,
        }));
        if opcode.is_control() {
            // ControlTooLong was checked at byte 1, so the length fits in 7 bits.
            self.step = PAYLOAD | (len as u8 & 0x7F);
            self.matching = u8::from(
                op == OP_PONG && self.flags & PONG_ARMED != 0 && len == PING_PAYLOAD_LEN as u64,
            );
        } else {
            self.step = PAYLOAD;
            if op != OP_CONT {
                self.flags &= !(MSG_BINARY | MSG_COMPRESSED | LIMIT_REPORTED);
                self.flags |= IN_MESSAGE;
                if op == OP_BINARY {
                    self.flags |= MSG_BINARY;
                }
                if self.head & RSV1 != 0 {
                    self.flags |= MSG_COMPRESSED;
                }
                self.message = 0;
            }
            self.message = self.message.saturating_add(len);
            if self.message > max_message && self.flags & LIMIT_REPORTED == 0 {
                self.flags |= LIMIT_REPORTED;
                on(Event::MessageTooBig {
                    len: self.message,
                    at,
                });
            }
        }
        if len == 0 {
            self.end_frame(at, on);
        }
    }

    /// The current frame ended at offset `end`.
    fn end_frame(&mut self, end: usize, on: &mut impl FnMut(Event)) {
        let op = self.head & 0x0F;
        let fin = self.head & FIN != 0;
        let ctl_len = usize::from(self.step & !PAYLOAD);
        self.step = 0;
        self.remaining = 0;
        let Some(opcode) = OpCode::from_bits(op) else {
            return self.fail(Violation::ReservedOpcode(op), end, on);
        };
        on(Event::FrameEnd { opcode, fin, end });
        // Only meaningful for control frames, whose header length follows from the direction.
        let start = end as isize - (self.control_header_len() + ctl_len) as isize;
        match opcode {
            OpCode::Close => {
                let code = (ctl_len >= 2).then(|| u16::from_be_bytes([self.mask[0], self.mask[1]]));
                on(Event::Close { code, start, end });
            }
            OpCode::Pong if self.matching == 1 => {
                self.matching = 0;
                self.flags &= !PONG_ARMED;
                on(Event::Pong { start, end });
            }
            OpCode::Ping | OpCode::Pong => {}
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if fin {
                    let kind = if self.flags & MSG_BINARY != 0 {
                        MessageKind::Binary
                    } else {
                        MessageKind::Text
                    };
                    let compressed = self.flags & MSG_COMPRESSED != 0;
                    let len = self.message;
                    self.flags &= !(IN_MESSAGE | MSG_BINARY | MSG_COMPRESSED | LIMIT_REPORTED);
                    self.message = 0;
                    on(Event::MessageEnd {
                        kind,
                        compressed,
                        len,
                        end,
                    });
                }
            }
        }
    }

    /// A control frame's header length: masking follows the direction (anything else was
    /// refused), and a control payload never needs an extended length.
    fn control_header_len(&self) -> usize {
        if self.flags & CLIENT != 0 { 6 } else { 2 }
    }

    fn fail(&mut self, reason: Violation, at: usize, on: &mut impl FnMut(Event)) {
        self.flags |= UNTRACKABLE;
        on(Event::Untrackable { reason, at });
    }
}

/// Extended length bytes for a header-phase `step`.
fn ext_bytes(step: u8) -> u8 {
    match (step >> EXT_SHIFT) & 3 {
        0 => 0,
        1 => 2,
        _ => 8,
    }
}

/// Total header length for a header-phase `step` once byte 1 is in (2 before that, which
/// the position never equals while still at byte 0 or 1).
fn header_len(step: u8) -> u8 {
    if step & POS < 2 {
        return u8::MAX;
    }
    2 + ext_bytes(step) + if step & MASKED != 0 { 4 } else { 0 }
}

/// A fresh random masking key (RFC 6455 §5.3: unpredictable, one per frame).
pub fn random_mask() -> [u8; 4] {
    rand::random()
}

/// Longest control frame: 2 header bytes, 4 key bytes, 125 payload bytes.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD as usize;

/// A control frame built on the stack (no allocation).
#[derive(Clone, Copy)]
pub struct ControlFrame {
    buf: [u8; MAX_CONTROL_FRAME],
    len: u8,
}

impl ControlFrame {
    /// The frame's bytes, ready to write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn build(op: u8, payload: &[&[u8]], mask: Option<[u8; 4]>) -> ControlFrame {
        let mut buf = [0u8; MAX_CONTROL_FRAME];
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let len = len.min(usize::from(MAX_CONTROL_PAYLOAD));
        let mut n = write_header(&mut buf, FIN | op, len as u64, mask);
        let body = n;
        for p in payload {
            let room = body + len - n;
            let take = p.len().min(room);
            buf[n..n + take].copy_from_slice(&p[..take]);
            n += take;
        }
        if let Some(m) = mask {
            apply_mask(&mut buf[body..n], m);
        }
        ControlFrame { buf, len: n as u8 }
    }
}

impl std::ops::Deref for ControlFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlFrame")
            .field(&self.as_bytes())
            .finish()
    }
}

/// A close frame with `code` and `reason`. The reason is cut to 123 bytes at a character
/// boundary (a control payload holds 125 bytes, two of them the code). RSV1 clear.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> ControlFrame {
    let mut cut = reason.len().min(usize::from(MAX_CONTROL_PAYLOAD) - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    ControlFrame::build(
        OP_CLOSE,
        &[&code.to_be_bytes(), &reason.as_bytes()[..cut]],
        mask,
    )
}

/// A ping frame; a payload longer than 125 bytes is cut to 125.
pub fn ping_frame(payload: &[u8], mask: Option<[u8; 4]>) -> ControlFrame {
    ControlFrame::build(OP_PING, &[payload], mask)
}

/// A single-frame data message, RSV1 clear (RFC 7692 §6 allows an uncompressed message on
/// a deflate connection). Unmasked frames can be built once and shared by every socket of
/// a broadcast: `Bytes` clones are cheap.
pub fn data_frame(kind: MessageKind, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let op = match kind {
        MessageKind::Text => OP_TEXT,
        MessageKind::Binary => OP_BINARY,
    };
    let mut head = [0u8; 14];
    let n = write_header(&mut head, FIN | op, payload.len() as u64, mask);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&head[..n]);
    out.put_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[n..], m);
    }
    out.freeze()
}

/// Writes a header with the minimal length encoding into `out` (at least 14 bytes);
/// returns its length.
fn write_header(out: &mut [u8], first: u8, len: u64, mask: Option<[u8; 4]>) -> usize {
    out[0] = first;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(l16) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&l16.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    n
}

fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::io::{Cursor, Read, Write};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode as TOp;
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// One frame written by tungstenite's own frame writer (it masks the payload itself).
    fn tframe(op: u8, fin: bool, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode: TOp::from(op),
            mask,
        };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .unwrap();
        out
    }

    fn mask_for(dir: Direction) -> Option<[u8; 4]> {
        (dir == C2S).then_some(KEY)
    }

    /// Feeds `stream` cut at `cuts` (sorted offsets) and returns the events with offsets
    /// made absolute (stream positions).
    fn feed_cut(t: &mut FrameTracker, stream: &[u8], cuts: &[usize], limit: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut base = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            t.feed(&stream[base..end], limit, &mut |e| {
                events.push(e.shifted(base))
            });
            base = end;
        }
        events
    }

    fn whole(dir: Direction, deflate: bool, stream: &[u8]) -> (FrameTracker, Vec<Event>) {
        let mut t = FrameTracker::new(dir, deflate);
        let ev = feed_cut(&mut t, stream, &[], NO_LIMIT);
        (t, ev)
    }

    fn starts(ev: &[Event]) -> Vec<FrameStart> {
        ev.iter()
            .filter_map(|e| match e {
                Event::FrameStart(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    fn untrackable(ev: &[Event]) -> Option<(Violation, usize)> {
        ev.iter().find_map(|e| match e {
            Event::Untrackable { reason, at } => Some((*reason, *at)),
            _ => None,
        })
    }

    /// Walks a whole buffer with tungstenite's header parser: (start, header_len, payload_len).
    fn reference_headers(stream: &[u8]) -> Vec<(usize, usize, u64)> {
        let mut out = Vec::new();
        let mut cur = Cursor::new(stream);
        while (cur.position() as usize) < stream.len() {
            let start = cur.position() as usize;
            let (_, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            let hl = cur.position() as usize - start;
            out.push((start, hl, len));
            cur.set_position(cur.position() + len);
        }
        out
    }

    #[test]
    fn state_fits_in_32_bytes() {
        let size = std::mem::size_of::<FrameTracker>();
        println!("size_of::<FrameTracker>() = {size}");
        assert!(size <= 32, "{size}");
    }

    #[test]
    fn lengths_at_the_edges_of_each_encoding() {
        for dir in [C2S, S2C] {
            for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
                let payload = vec![0x5a; len];
                let f = tframe(2, true, false, &payload, mask_for(dir));
                let (t, ev) = whole(dir, false, &f);
                let r = reference_headers(&f);
                assert_eq!(r.len(), 1);
                let s = starts(&ev);
                assert_eq!(s.len(), 1, "{dir:?} {len}");
                assert_eq!(usize::from(s[0].header_len), r[0].1, "{dir:?} {len}");
                assert_eq!(s[0].payload_len, len as u64);
                assert_eq!(s[0].masked, dir == C2S);
                let want_hl = match len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                } + if dir == C2S { 4 } else { 0 };
                assert_eq!(usize::from(s[0].header_len), want_hl);
                assert_eq!(
                    &ev[1..],
                    &[
                        Event::FrameEnd {
                            opcode: OpCode::Binary,
                            fin: true,
                            end: f.len()
                        },
                        Event::MessageEnd {
                            kind: MessageKind::Binary,
                            compressed: false,
                            len: len as u64,
                            end: f.len()
                        }
                    ]
                );
                assert!(t.at_frame_boundary() && !t.in_fragmented_message());
            }
        }
    }

    #[test]
    fn non_minimal_lengths_are_followed_not_judged() {
        // 5 bytes announced in the 16-bit form, 300 in the 64-bit form.
        let mut s = vec![0x82, 126, 0, 5];
        s.extend_from_slice(&[1; 5]);
        s.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 0, 1, 44]);
        s.extend_from_slice(&[2; 300]);
        // tungstenite (a lenient receiver) reads the same two frames.
        assert_eq!(reference_headers(&s), vec![(0, 4, 5), (9, 10, 300)]);
        let (t, ev) = whole(S2C, false, &s);
        assert_eq!(untrackable(&ev), None);
        let lens: Vec<_> = starts(&ev).iter().map(|f| f.payload_len).collect();
        assert_eq!(lens, vec![5, 300]);
        assert!(t.at_frame_boundary());
    }

    #[test]
    fn zero_length_frames_end_where_their_header_ends() {
        for dir in [C2S, S2C] {
            let m = mask_for(dir);
            let mut s = tframe(1, false, false, b"", m);
            s.extend(tframe(0x9, true, false, b"", m));
            s.extend(tframe(0xA, true, false, b"", m));
            s.extend(tframe(0, true, false, b"", m));
            s.extend(tframe(2, true, false, b"", m));
            s.extend(tframe(0x8, true, false, b"", m));
            let hl = if dir == C2S { 6 } else { 2 };
            let (t, ev) = whole(dir, false, &s);
            let ends: Vec<_> = ev
                .iter()
                .filter_map(|e| match e {
                    Event::FrameEnd { end, .. } => Some(*end),
                    _ => None,
                })
                .collect();
            assert_eq!(ends, (1..=6).map(|k| k * hl).collect::<Vec<_>>());
            let messages: Vec<_> = ev
                .iter()
                .filter(|e| matches!(e, Event::MessageEnd { len: 0, .. }))
                .collect();
            assert_eq!(messages.len(), 2);
            assert_eq!(
                ev.last(),
                Some(&Event::Close {
                    code: None,
                    start: (5 * hl) as isize,
                    end: 6 * hl
                })
            );
            // A zero-length frame at the very end of a chunk is finished in that call.
            assert!(t.at_frame_boundary());
        }
    }

    #[test]
    fn fragmented_message_with_control_frames_interleaved() {
        for dir in [C2S, S2C] {
            let m = mask_for(dir);
            let parts: Vec<Vec<u8>> = vec![
                tframe(1, false, false, &[b'a'; 10], m),
                tframe(0x9, true, false, b"ping", m),
                tframe(0, false, false, &[b'b'; 200], m),
                tframe(0xA, true, false, b"pong", m),
                tframe(0x8, true, false, &[0x03, 0xe8], m),
                tframe(0, true, false, &[b'c'; 70_000], m),
                tframe(2, true, false, b"next", m),
            ];
            let mut t = FrameTracker::new(dir, false);
            let mut inside = Vec::new();
            let mut events = Vec::new();
            for p in &parts {
                t.feed(p, NO_LIMIT, &mut |e| events.push(e));
                assert!(t.at_frame_boundary());
                inside.push(t.in_fragmented_message());
            }
            assert_eq!(inside, [true, true, true, true, true, false, false]);
            let messages: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::MessageEnd { kind, len, .. } => Some((*kind, *len)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                messages,
                [(MessageKind::Text, 70_210), (MessageKind::Binary, 4)]
            );
            assert!(events.iter().any(|e| matches!(
                e,
                Event::Close {
                    code: Some(1000),
                    ..
                }
            )));
            assert_eq!(untrackable(&events), None);
        }
    }

    #[test]
    fn close_codes_with_and_without_reason_and_empty() {
        for dir in [C2S, S2C] {
            let m = mask_for(dir);
            let hl = if dir == C2S { 6 } else { 2 };
            for (payload, code) in [
                (&b"\x0f\xa1token expired"[..], Some(4001)),
                (&b"\x03\xe9"[..], Some(1001)),
                (&b""[..], None),
                // One byte is malformed, but not our call: no code, still tracked.
                (&b"\x03"[..], None),
            ] {
                let mut s = tframe(2, true, false, b"xyz", m);
                let start = s.len();
                s.extend(tframe(0x8, true, false, payload, m));
                let (t, ev) = whole(dir, false, &s);
                assert_eq!(
                    ev.last(),
                    Some(&Event::Close {
                        code,
                        start: start as isize,
                        end: start + hl + payload.len()
                    }),
                    "{dir:?} {payload:?}"
                );
                assert!(t.at_frame_boundary());
                // Split anywhere: same code and offsets.
                for cut in 0..=s.len() {
                    let mut t = FrameTracker::new(dir, false);
                    assert_eq!(feed_cut(&mut t, &s, &[cut], NO_LIMIT), ev);
                }
            }
        }
    }

    #[test]
    fn masking_must_follow_the_direction() {
        let unmasked = tframe(1, true, false, b"hi", None);
        let masked = tframe(1, true, false, b"hi", Some(KEY));
        let (t, ev) = whole(C2S, false, &unmasked);
        assert_eq!(untrackable(&ev), Some((Violation::Unmasked, 1)));
        assert!(t.is_untrackable() && !t.at_frame_boundary());
        let (_, ev) = whole(S2C, false, &masked);
        assert_eq!(untrackable(&ev), Some((Violation::Masked, 1)));
        assert_eq!(untrackable(&whole(C2S, false, &masked).1), None);
        assert_eq!(untrackable(&whole(S2C, false, &unmasked).1), None);
    }

    #[test]
    fn every_violation_makes_it_untrackable_once_at_the_offending_byte() {
        let text_open = tframe(1, false, false, b"a", None); // 3 bytes
        let cases: Vec<(Vec<u8>, bool, Violation, usize)> = {
            let mut v: Vec<(Vec<u8>, bool, Violation, usize)> = Vec::new();
            for op in (3..=7).chain(0xB..=0xF) {
                v.push((vec![0x80 | op, 0], false, Violation::ReservedOpcode(op), 0));
            }
            v.push((vec![0x89, 126, 0, 126], false, Violation::ControlTooLong, 1));
            v.push((vec![0x88, 127], false, Violation::ControlTooLong, 1));
            v.push((vec![0x09, 0], false, Violation::FragmentedControl, 0));
            v.push((
                vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                false,
                Violation::LengthTopBit,
                2,
            ));
            v.push((
                vec![0x80, 0],
                false,
                Violation::ContinuationWithoutMessage,
                0,
            ));
            let mut s = text_open.clone();
            s.extend([0x81, 0]);
            v.push((s, false, Violation::DataInsideMessage, 3));
            let mut s = text_open.clone();
            s.extend([0x82, 0]);
            v.push((s, true, Violation::DataInsideMessage, 3));
            v.push((vec![0xc1, 0], false, Violation::Rsv1WithoutDeflate, 0));
            v.push((vec![0xc9, 0], true, Violation::Rsv1OnControl, 0));
            let mut s = text_open.clone();
            s.extend([0xc0, 0]);
            v.push((s, true, Violation::Rsv1OnContinuation, 3));
            v.push((vec![0xa1, 0], true, Violation::Rsv2Rsv3, 0));
            v.push((vec![0x91, 0], true, Violation::Rsv2Rsv3, 0));
            v.push((vec![0x81, 0x80, 1, 2, 3, 4], false, Violation::Masked, 1));
            v
        };
        for (s, deflate, want, at) in cases {
            let mut stream = s.clone();
            // Valid frames after the violation must not be reported.
            stream.extend(tframe(2, true, false, b"after", None));
            for cut in 0..=stream.len() {
                let mut t = FrameTracker::new(S2C, deflate);
                let ev = feed_cut(&mut t, &stream, &[cut], NO_LIMIT);
                let bad: Vec<_> = ev
                    .iter()
                    .filter(|e| matches!(e, Event::Untrackable { .. }))
                    .collect();
                assert_eq!(
                    bad,
                    [&Event::Untrackable { reason: want, at }],
                    "{s:?} cut {cut}"
                );
                assert_eq!(ev.last(), bad.last().copied());
                assert!(t.is_untrackable() && !t.at_frame_boundary());
                t.feed(&stream, NO_LIMIT, &mut |e| {
                    panic!("after untrackable: {e:?}")
                });
            }
        }
        let mut t = FrameTracker::new(C2S, false);
        let ev = feed_cut(&mut t, &[0x81, 0x05], &[], NO_LIMIT);
        assert_eq!(untrackable(&ev), Some((Violation::Unmasked, 1)));
    }

    #[test]
    fn deflate_allows_rsv1_on_a_first_data_frame_only() {
        let mut s = tframe(1, false, true, b"compressed", None);
        s.extend(tframe(0, true, false, b"more", None));
        s.extend(tframe(2, true, false, b"plain", None));
        let (_, ev) = whole(S2C, true, &s);
        assert_eq!(untrackable(&ev), None);
        let messages: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::MessageEnd {
                    kind,
                    compressed,
                    len,
                    ..
                } => Some((*kind, *compressed, *len)),
                _ => None,
            })
            .collect();
        assert_eq!(
            messages,
            [
                (MessageKind::Text, true, 14),
                (MessageKind::Binary, false, 5)
            ]
        );
        assert_eq!(starts(&ev)[0].rsv, 0b100);
        // The same stream without deflate negotiated.
        assert_eq!(
            untrackable(&whole(S2C, false, &s).1),
            Some((Violation::Rsv1WithoutDeflate, 0))
        );
        let mut s = tframe(1, false, false, b"a", None);
        s.extend(tframe(0, true, true, b"b", None));
        assert_eq!(
            untrackable(&whole(S2C, true, &s).1),
            Some((Violation::Rsv1OnContinuation, 3))
        );
        let ping = tframe(9, true, true, b"p", Some(KEY));
        assert_eq!(
            untrackable(&whole(C2S, true, &ping).1),
            Some((Violation::Rsv1OnControl, 0))
        );
    }

    #[test]
    fn message_limit_is_reported_once_at_the_crossing_header() {
        let mut s = tframe(2, false, false, &[0; 40], None); // 42 bytes
        s.extend(tframe(0, false, false, &[0; 60], None)); // 62: total 100
        s.extend(tframe(0, false, false, &[0; 200], None)); // 4 + 200: total 300
        s.extend(tframe(0, true, false, &[0; 5], None)); // total 305
        s.extend(tframe(1, true, false, &[0; 100], None)); // a new message of exactly 100
        let third = s.len();
        s.extend(tframe(1, true, false, &[0; 101], None)); // and one over again
        for cut in 0..=s.len() {
            let mut t = FrameTracker::new(S2C, false);
            let ev = feed_cut(&mut t, &s, &[cut], 100);
            let big: Vec<_> = ev
                .iter()
                .filter(|e| matches!(e, Event::MessageTooBig { .. }))
                .collect();
            // At the 200-byte frame's header (42 + 62 + 4), before its payload; then at
            // the third message's header.
            assert_eq!(
                big,
                [
                    &Event::MessageTooBig { len: 300, at: 108 },
                    &Event::MessageTooBig {
                        len: 101,
                        at: third + 2
                    }
                ]
            );
            assert!(ev.contains(&Event::MessageEnd {
                kind: MessageKind::Binary,
                compressed: false,
                len: 305,
                end: 42 + 62 + 204 + 7
            }));
        }
        // The limit is known from a header alone: a 1 GiB frame is refused before its payload.
        let mut t = FrameTracker::new(S2C, false);
        let mut ev = Vec::new();
        let head = [0x82, 127, 0, 0, 0, 0, 0x40, 0, 0, 0];
        t.feed(&head, 1 << 20, &mut |e| ev.push(e));
        assert_eq!(
            ev.last(),
            Some(&Event::MessageTooBig {
                len: 1 << 30,
                at: 10
            })
        );
    }

    #[test]
    fn our_pong_is_recognised_streaming_and_only_once() {
        let ping: [u8; 8] = *b"wsg8ping";
        for dir in [C2S, S2C] {
            let m = mask_for(dir);
            let hl = if dir == C2S { 6 } else { 2 };
            let mut s = tframe(1, false, false, b"frag", m);
            let other = s.len();
            s.extend(tframe(0xA, true, false, b"wsg8pinG", m)); // not ours: forwarded
            let ours = s.len();
            s.extend(tframe(0xA, true, false, &ping, m));
            let again = s.len();
            s.extend(tframe(0xA, true, false, &ping, m)); // a second copy is not ours
            s.extend(tframe(0, true, false, b"end", m));
            let mut reference = None;
            for cut in 0..=s.len() {
                let mut t = FrameTracker::new(dir, false);
                t.expect_pong(&ping);
                let ev = feed_cut(&mut t, &s[..cut], &[], NO_LIMIT);
                // What the splice would hold back at this cut.
                let held = t.pending_pong_len();
                let want_held = if cut > ours && cut < again {
                    cut - ours
                } else if cut > other && cut < ours && cut - other <= hl + 7 {
                    // The wrong pong looks like ours until its last byte.
                    cut - other
                } else {
                    0
                };
                assert_eq!(held, want_held, "{dir:?} cut {cut}");
                let mut ev = ev;
                t.feed(&s[cut..], NO_LIMIT, &mut |e| ev.push(e.shifted(cut)));
                let pongs: Vec<_> = ev
                    .iter()
                    .filter(|e| matches!(e, Event::Pong { .. }))
                    .copied()
                    .collect();
                assert_eq!(
                    pongs,
                    [Event::Pong {
                        start: ours as isize,
                        end: again
                    }]
                );
                assert!(!t.pong_expected());
                match &reference {
                    None => reference = Some(ev),
                    Some(r) => assert_eq!(&ev, r),
                }
            }
            // Without an expectation, no pong is ours.
            let (_, ev) = whole(dir, false, &s);
            assert!(!ev.iter().any(|e| matches!(e, Event::Pong { .. })));
        }
    }

    /// Many frames: data messages of the given lengths, every third one fragmented with
    /// a ping, a close (payload 0 to 5 bytes) and a pong interleaved; every fourth one
    /// compressed when deflate is on.
    fn many_frames(dir: Direction, deflate: bool, lens: &[usize], rng: &mut StdRng) -> Vec<u8> {
        let mut m = || mask_for(dir).map(|_| rng.r#gen::<[u8; 4]>());
        let mut s = Vec::new();
        for k in 0..60 {
            let len = lens[k % lens.len()];
            let fragmented = k % 3 == 0;
            let first = if k % 2 == 0 { 1 } else { 2 };
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + k) as u8).collect();
            s.extend(tframe(
                first,
                !fragmented,
                deflate && k % 4 == 0,
                &payload,
                m(),
            ));
            if fragmented {
                s.extend(tframe(9, true, false, &[7; 125], m()));
                s.extend(tframe(0, false, false, b"mid", m()));
                let code = [0x03, 0xe8, b'b', b'y', b'e'];
                s.extend(tframe(8, true, false, &code[..k % 6], m()));
                s.extend(tframe(0xA, true, false, b"wsg8ping", m()));
                s.extend(tframe(0, true, false, &payload[..len.min(9)], m()));
            }
        }
        s
    }

    /// Feeds `s` whole and cut at each of `cuts`, byte by byte, and in random chunkings:
    /// the events (offsets made absolute) must all be the same.
    fn same_events_however_cut(
        dir: Direction,
        deflate: bool,
        s: &[u8],
        limit: u64,
        cuts: impl Iterator<Item = usize>,
        rng: &mut StdRng,
    ) {
        // The framing agrees with tungstenite's parser.
        let (_, all) = whole(dir, deflate, s);
        let ours: Vec<_> = starts(&all)
            .iter()
            .map(|f| {
                let hl = usize::from(f.header_len);
                (f.payload_at - hl, hl, f.payload_len)
            })
            .collect();
        assert_eq!(ours, reference_headers(s));
        assert_eq!(untrackable(&all), None);

        let run = |cuts: &[usize]| {
            let mut t = FrameTracker::new(dir, deflate);
            t.expect_pong(b"wsg8ping");
            let ev = feed_cut(&mut t, s, cuts, limit);
            assert!(t.at_frame_boundary() && !t.in_fragmented_message());
            ev
        };
        let want = run(&[]);
        assert!(want.iter().any(|e| matches!(e, Event::Pong { .. })));
        assert!(
            want.iter()
                .any(|e| matches!(e, Event::MessageTooBig { .. }))
        );
        for cut in cuts {
            assert_eq!(run(&[cut]), want, "{dir:?} deflate {deflate} cut {cut}");
        }
        let bytewise: Vec<usize> = (1..s.len()).collect();
        assert_eq!(run(&bytewise), want);
        for _ in 0..100 {
            let n = rng.gen_range(1..40);
            let mut cuts: Vec<usize> = (0..n).map(|_| rng.gen_range(0..=s.len())).collect();
            cuts.sort_unstable();
            assert_eq!(run(&cuts), want, "cuts {cuts:?}");
        }
    }

    #[test]
    fn every_split_gives_the_same_events_as_the_whole_stream() {
        let mut rng = StdRng::seed_from_u64(6455);
        for dir in [C2S, S2C] {
            for deflate in [false, true] {
                let s = many_frames(dir, deflate, &[0, 1, 2, 7, 125, 126, 127, 300], &mut rng);
                same_events_however_cut(dir, deflate, &s, 300, 0..=s.len(), &mut rng);
            }
        }
    }

    #[test]
    fn splits_around_every_header_of_large_frames_give_the_same_events() {
        // Every position near a frame start, where the header and the 16/64-bit lengths
        // are; inside 64 KiB payloads only the random chunkings cut.
        let mut rng = StdRng::seed_from_u64(7692);
        for dir in [C2S, S2C] {
            let s = many_frames(dir, true, &[65535, 3, 65536, 126], &mut rng);
            let near: Vec<usize> = reference_headers(&s)
                .iter()
                .flat_map(|&(start, _, _)| start.saturating_sub(2)..(start + 20).min(s.len()))
                .collect();
            same_events_however_cut(dir, true, &s, 65_540, near.into_iter(), &mut rng);
        }
    }

    /// An in-memory socket for tungstenite's protocol reader.
    struct Pipe(Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Reads one message the way a real endpoint on the receiving side would.
    fn receive(dir: Direction, bytes: &[u8]) -> Message {
        // A client→server frame is read by a server, and the other way round.
        let role = if dir == C2S {
            Role::Server
        } else {
            Role::Client
        };
        let mut ws =
            WebSocket::from_raw_socket(Pipe(Cursor::new(bytes.to_vec()), Vec::new()), role, None);
        ws.read().unwrap()
    }

    #[test]
    fn built_frames_are_read_back_by_tungstenite_and_tracked() {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        for dir in [C2S, S2C] {
            let close = close_frame(4001, "token expired", dir.injected_mask());
            assert_eq!(close[1] & 0x80 != 0, dir == C2S);
            assert_eq!(close[0], 0x88, "FIN, RSV clear, close");
            match receive(dir, &close) {
                Message::Close(Some(CloseFrame { code, reason })) => {
                    assert_eq!(u16::from(code), 4001);
                    assert_eq!(reason.as_str(), "token expired");
                }
                other => panic!("{other:?}"),
            }
            let (_, ev) = whole(dir, true, &close);
            assert!(ev.contains(&Event::Close {
                code: Some(4001),
                start: 0,
                end: close.len()
            }));

            let ping = ping_frame(b"wsg8ping", dir.injected_mask());
            assert_eq!(
                receive(dir, &ping),
                Message::Ping(b"wsg8ping".to_vec().into())
            );

            for len in [0, 125, 126, 65535, 65536] {
                let payload = "x".repeat(len);
                let text = data_frame(MessageKind::Text, payload.as_bytes(), dir.injected_mask());
                assert_eq!(text[0], 0x81, "FIN, RSV1 clear even on deflate, text");
                assert_eq!(receive(dir, &text), Message::Text(payload.clone().into()));
                let bin = data_frame(MessageKind::Binary, payload.as_bytes(), dir.injected_mask());
                assert_eq!(receive(dir, &bin), Message::Binary(payload.clone().into()));
                let (t, ev) = whole(dir, true, &text);
                assert!(t.at_frame_boundary() && untrackable(&ev).is_none());
            }
        }
        // A long reason is cut to 123 bytes at a character boundary.
        let reason = "é".repeat(100);
        let close = close_frame(1001, &reason, None);
        assert_eq!(close.len(), 2 + 2 + 122);
        match receive(S2C, &close) {
            Message::Close(Some(CloseFrame { reason: r, .. })) => {
                assert_eq!(r.as_str(), "é".repeat(61))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ping_frame(&[1; 300], None).len(), 2 + 125);
    }

    #[test]
    fn a_fresh_tracker_is_at_a_boundary_outside_a_message() {
        let t = FrameTracker::new(C2S, false);
        assert!(t.at_frame_boundary() && !t.in_fragmented_message() && !t.is_untrackable());
        assert_eq!(t.direction(), C2S);
        assert_eq!(t.pending_pong_len(), 0);
        // A header split anywhere is not a boundary.
        let mut t = FrameTracker::new(S2C, false);
        t.feed(&[0x82, 126, 1], NO_LIMIT, &mut |_| {});
        assert!(!t.at_frame_boundary());
    }
}
