//! Pixel-data frames of a stored instance, as WADO-RS `/frames` serves them.
//!
//! [`extract_frames`] answers `.../frames/{list}`:
//!
//! - Native (uncompressed) transfer syntaxes (Implicit VR LE, Explicit VR
//!   LE, Explicit VR BE, Deflated Explicit VR LE): the frame's bytes in
//!   little endian (16/32-bit samples of big-endian files are byte-swapped),
//!   `application/octet-stream`, transfer syntax Explicit VR Little Endian.
//!   Planar Configuration is passed through as stored; 1-bit frames are
//!   `ceil(Rows*Columns*SamplesPerPixel / 8)` bytes, re-aligned to a byte
//!   boundary when a frame does not start on one; native `YBR_FULL_422`
//!   frames are `Rows*Columns*2` samples, as stored.
//! - Encapsulated syntaxes with [`FrameWant::Original`]: the frame's
//!   compressed bitstream with the media type of PS3.18 table 8.7.3-2 and
//!   the stored transfer syntax. Frame boundaries come from the Extended
//!   Offset Table, else the Basic Offset Table, else one fragment per frame,
//!   else (one frame) all fragments, else frame-start markers (JPEG SOI,
//!   JPEG 2000 SOC, JPEG XL signature); otherwise `CannotRender`. Video
//!   syntaxes (MPEG-2, H.264, H.265) answer the whole stream as one part.
//! - Encapsulated syntaxes with [`FrameWant::Uncompressed`]: the frame
//!   decoded (RLE by this module's own decoder, any sample size; the others
//!   by dicom-pixeldata, given a one-frame object) to native little-endian
//!   samples
//!   (interleaved, not rescaled, not windowed; JPEG colour frames come out
//!   as RGB, as the JPEG decoder converts them), `CannotRender` when this
//!   build has no decoder for the syntax (see [`can_decode`]).
//!
//! Errors: a frame number of 0 or past Number of Frames is `NotFound`
//! naming the frame; an instance without Pixel Data (SR, encapsulated PDF)
//! is `NotFound("instance has no pixel data")` (there are no frames to
//! find); an empty frame list is `BadRequest`; bytes that do not parse as
//! a Part-10 file are `Internal` (they are stored objects, not client
//! input); missing Rows, Columns or Bits Allocated is `CannotRender`.

use std::borrow::Cow;

use bytes::Bytes;
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::error::ApiError;

/// Explicit VR Little Endian, the transfer syntax of native frames.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Media type of native (uncompressed) frames.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// One frame (or, for video, the whole stream) of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub data: Bytes,
    pub media_type: &'static str,
    /// The transfer syntax of `data`: Explicit VR LE for native frames, the
    /// stored syntax for compressed ones.
    pub transfer_syntax: Option<String>,
}

/// Which form of the frames the client wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameWant {
    /// As stored: native frames little endian, compressed ones as their
    /// bitstream.
    Original,
    /// Always native little-endian samples (decoding compressed frames).
    Uncompressed,
}

/// Extract frames `numbers` (1-based, in the order asked, repeats allowed)
/// of the Part-10 file `part10`. See the module documentation.
pub fn extract_frames(
    part10: &[u8],
    numbers: &[u32],
    want: FrameWant,
) -> Result<Vec<Frame>, ApiError> {
    if numbers.is_empty() {
        return Err(ApiError::BadRequest("no frame numbers given".into()));
    }
    let inst = Instance::open(part10)?
        .ok_or_else(|| ApiError::NotFound("instance has no pixel data".into()))?;
    let indices = numbers
        .iter()
        .map(|&n| inst.frame_index(n))
        .collect::<Result<Vec<_>, _>>()?;
    let ts = inst.info.ts.clone();
    match classify(&ts) {
        _ if !inst.is_encapsulated() => indices
            .iter()
            .map(|&i| {
                Ok(Frame {
                    data: Bytes::from(inst.native_frame(i)?.into_owned()),
                    media_type: OCTET_STREAM,
                    transfer_syntax: Some(EXPLICIT_VR_LE.to_string()),
                })
            })
            .collect(),
        Syntax::Video(media_type) => {
            // A video stream is not split in frames: the whole stream, once.
            let data: Vec<u8> = inst.fragments().iter().flatten().copied().collect();
            match want {
                FrameWant::Original => Ok(vec![Frame {
                    data: Bytes::from(data),
                    media_type,
                    transfer_syntax: Some(ts),
                }]),
                FrameWant::Uncompressed => Err(ApiError::CannotRender(format!(
                    "video transfer syntax {ts} cannot be decoded to frames"
                ))),
            }
        }
        Syntax::Encapsulated(media_type) => match want {
            FrameWant::Original => {
                let spans = inst.frame_spans()?;
                Ok(indices
                    .iter()
                    .map(|&i| Frame {
                        data: Bytes::from(inst.bitstream(&spans[i]).into_owned()),
                        media_type,
                        transfer_syntax: Some(ts.clone()),
                    })
                    .collect())
            }
            FrameWant::Uncompressed => {
                ensure_decodable(&ts)?;
                let spans = inst.frame_spans()?;
                indices
                    .iter()
                    .map(|&i| {
                        let data = inst.decode_span(&spans[i], i)?;
                        Ok(Frame {
                            data: Bytes::from(data),
                            media_type: OCTET_STREAM,
                            transfer_syntax: Some(EXPLICIT_VR_LE.to_string()),
                        })
                    })
                    .collect()
            }
        },
        Syntax::Native => Err(ApiError::Internal(format!(
            "native transfer syntax {ts} with encapsulated pixel data"
        ))),
    }
}

/// Whether this build can decode pixel data of transfer syntax `ts`
/// (native syntaxes always; encapsulated ones with a registered decoder:
/// JPEG Baseline/Extended/Lossless, RLE Lossless, Encapsulated Uncompressed,
/// Deflated Image Frame Compression).
pub fn can_decode(ts: &str) -> bool {
    let ts = ts.trim_end_matches(['\0', ' ']);
    match TransferSyntaxRegistry.get(ts) {
        Some(t) => !matches!(classify(ts), Syntax::Video(_)) && t.can_decode_all(),
        None => false,
    }
}

fn ensure_decodable(ts: &str) -> Result<(), ApiError> {
    if can_decode(ts) {
        return Ok(());
    }
    let name = TransferSyntaxRegistry
        .get(ts)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    Err(ApiError::CannotRender(format!(
        "transfer syntax {ts} ({name}) cannot be decoded by this build"
    )))
}

/// How a transfer syntax stores pixel data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Native pixel data (byte order from the syntax).
    Native,
    /// Encapsulated frames with this media type (PS3.18 table 8.7.3-2).
    Encapsulated(&'static str),
    /// Encapsulated video stream with this media type.
    Video(&'static str),
}

pub(crate) fn classify(ts: &str) -> Syntax {
    match ts {
        "1.2.840.10008.1.2"
        | "1.2.840.10008.1.2.1"
        | "1.2.840.10008.1.2.2"
        | "1.2.840.10008.1.2.1.99" => Syntax::Native,
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => Syntax::Encapsulated("image/jpeg"),
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Syntax::Encapsulated("image/jls"),
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Syntax::Encapsulated("image/jp2"),
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => Syntax::Encapsulated("image/jpx"),
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            Syntax::Encapsulated("image/jphc")
        }
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            Syntax::Encapsulated("image/jxl")
        }
        "1.2.840.10008.1.2.5" => Syntax::Encapsulated("image/x-dicom-rle"),
        "1.2.840.10008.1.2.4.100"
        | "1.2.840.10008.1.2.4.100.1"
        | "1.2.840.10008.1.2.4.101"
        | "1.2.840.10008.1.2.4.101.1" => Syntax::Video("video/mpeg"),
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.102.1"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.103.1"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.104.1"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.105.1"
        | "1.2.840.10008.1.2.4.106"
        | "1.2.840.10008.1.2.4.106.1" => Syntax::Video("video/mp4"),
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => Syntax::Video("video/H265"),
        // Encapsulated Uncompressed, Deflated Image Frame Compression and
        // anything newer: bytes without a registered image media type.
        _ => Syntax::Encapsulated(OCTET_STREAM),
    }
}

/// The Image Pixel module attributes needed to locate and interpret frames.
#[derive(Clone, Debug)]
pub(crate) struct PixelInfo {
    pub rows: u32,
    pub cols: u32,
    pub samples: u32,
    pub bits_allocated: u32,
    pub bits_stored: u32,
    pub high_bit: u32,
    pub signed: bool,
    pub planar: u32,
    pub photometric: String,
    pub frames: u32,
    /// Stored transfer syntax UID (trimmed).
    pub ts: String,
}

impl PixelInfo {
    fn from_obj(obj: &DefaultDicomObject) -> Result<Self, ApiError> {
        let required = |tag, name: &str| -> Result<u32, ApiError> {
            uint(obj, tag).ok_or_else(|| {
                ApiError::CannotRender(format!("image attribute {name} missing or invalid"))
            })
        };
        let rows = required(tags::ROWS, "Rows")?;
        let cols = required(tags::COLUMNS, "Columns")?;
        let bits_allocated = required(tags::BITS_ALLOCATED, "BitsAllocated")?;
        if rows == 0 || cols == 0 {
            return Err(ApiError::CannotRender(
                "image has zero rows or columns".into(),
            ));
        }
        if !matches!(bits_allocated, 1 | 8 | 16 | 32 | 64) {
            return Err(ApiError::CannotRender(format!(
                "BitsAllocated {bits_allocated} is not supported"
            )));
        }
        let samples = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
        let bits_stored = uint(obj, tags::BITS_STORED)
            .filter(|&b| b >= 1 && b <= bits_allocated)
            .unwrap_or(bits_allocated);
        let high_bit = uint(obj, tags::HIGH_BIT)
            .filter(|&h| h + 1 >= bits_stored && h < bits_allocated)
            .unwrap_or(bits_stored - 1);
        let frames = obj
            .get(tags::NUMBER_OF_FRAMES)
            .and_then(|e| e.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()))
            .filter(|&n| n > 0)
            .unwrap_or(1);
        Ok(PixelInfo {
            rows,
            cols,
            samples,
            bits_allocated,
            bits_stored,
            high_bit,
            signed: uint(obj, tags::PIXEL_REPRESENTATION) == Some(1),
            planar: uint(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0),
            photometric: string(obj, tags::PHOTOMETRIC_INTERPRETATION)
                .unwrap_or_else(|| "MONOCHROME2".into())
                .to_ascii_uppercase(),
            frames,
            ts: obj
                .meta()
                .transfer_syntax()
                .trim_end_matches(['\0', ' '])
                .to_string(),
        })
    }

    pub fn pixels(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// Bytes of one sample (1-bit samples count as 1 after unpacking).
    pub fn sample_bytes(&self) -> usize {
        (self.bits_allocated as usize).div_ceil(8)
    }

    /// Whether native frames hold `YBR_FULL_422` subsampled data (two
    /// samples per pixel on average).
    pub fn native_422(&self) -> bool {
        self.samples == 3 && self.photometric == "YBR_FULL_422"
    }

    /// Bits of one native frame as stored.
    fn native_frame_bits(&self) -> usize {
        let samples = if self.native_422() {
            self.pixels() * 2
        } else {
            self.pixels() * self.samples as usize
        };
        samples * self.bits_allocated as usize
    }

    /// Bytes of one decoded (interleaved, full resolution) frame.
    pub fn decoded_frame_len(&self) -> usize {
        self.pixels() * self.samples as usize * self.sample_bytes()
    }
}

/// A parsed instance with its Pixel Data taken out of the data set.
pub(crate) struct Instance {
    pub obj: DefaultDicomObject,
    pub info: PixelInfo,
    pixel: Value<InMemDicomObject, Vec<u8>>,
}

/// The fragments (indices into the fragment list) making up one frame, and
/// the frame's length when the Extended Offset Table gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub fragments: std::ops::Range<usize>,
    /// Bytes to skip at the start of the fragments' concatenation (frames
    /// found inside a fragment).
    pub skip: usize,
    pub len: Option<usize>,
}

impl Instance {
    /// Parse a Part-10 file (with or without the 128-byte preamble) once.
    /// `Ok(None)`: a valid instance without Pixel Data.
    pub fn open(part10: &[u8]) -> Result<Option<Self>, ApiError> {
        let mut obj = OpenFileOptions::new()
            .from_reader(part10)
            .map_err(|e| ApiError::Internal(format!("stored object is not readable DICOM: {e}")))?;
        let Some(pixel) = obj.take(tags::PIXEL_DATA) else {
            return Ok(None);
        };
        let info = PixelInfo::from_obj(&obj)?;
        Ok(Some(Instance {
            obj,
            info,
            pixel: pixel.into_value(),
        }))
    }

    /// 0-based index of 1-based frame `number`, or `NotFound`.
    pub fn frame_index(&self, number: u32) -> Result<usize, ApiError> {
        if number == 0 || number > self.info.frames {
            return Err(ApiError::NotFound(format!(
                "frame {number} (the instance has {} frame{})",
                self.info.frames,
                if self.info.frames == 1 { "" } else { "s" }
            )));
        }
        Ok(number as usize - 1)
    }

    pub fn is_encapsulated(&self) -> bool {
        matches!(self.pixel, Value::PixelSequence(_))
    }

    pub fn fragments(&self) -> &[Vec<u8>] {
        match &self.pixel {
            Value::PixelSequence(seq) => seq.fragments(),
            _ => &[],
        }
    }

    /// The frame's native samples, little endian, as stored (planar
    /// configuration and bit packing kept).
    pub fn native_frame(&self, index: usize) -> Result<Cow<'_, [u8]>, ApiError> {
        let Value::Primitive(value) = &self.pixel else {
            return Err(ApiError::Internal("pixel data is not native".into()));
        };
        let info = &self.info;
        // In-memory typed values are host (little) endian words; U8 values
        // are the bytes as they were in the file.
        let word = match value {
            PrimitiveValue::U8(_) => 1,
            PrimitiveValue::U16(_) | PrimitiveValue::I16(_) => 2,
            PrimitiveValue::U32(_) | PrimitiveValue::I32(_) | PrimitiveValue::F32(_) => 4,
            PrimitiveValue::U64(_) | PrimitiveValue::I64(_) | PrimitiveValue::F64(_) => 8,
            _ => {
                return Err(ApiError::CannotRender(
                    "pixel data has an unexpected type".into(),
                ));
            }
        };
        if cfg!(target_endian = "big") && word > 1 {
            return Err(ApiError::Internal(
                "big-endian hosts are not supported".into(),
            ));
        }
        let bytes = value.to_bytes();
        let frame_bits = info.native_frame_bits();
        let frame_len = frame_bits.div_ceil(8);
        let start_bit = frame_bits * index;
        let short = || {
            ApiError::CannotRender(format!(
                "pixel data is too short for frame {} ({} bytes stored)",
                index + 1,
                bytes.len()
            ))
        };
        if !start_bit.is_multiple_of(8) {
            // 1-bit frames not starting on a byte boundary: realign.
            let start = start_bit / 8;
            let shift = (start_bit % 8) as u32;
            let needed = (start_bit + frame_bits).div_ceil(8);
            if bytes.len() < needed {
                return Err(short());
            }
            let mut out: Vec<u8> = (0..frame_len)
                .map(|j| {
                    let lo = bytes[start + j] >> shift;
                    let hi = bytes.get(start + j + 1).map_or(0, |b| b << (8 - shift));
                    lo | hi
                })
                .collect();
            mask_tail(&mut out, frame_bits);
            return Ok(Cow::Owned(out));
        }
        let start = start_bit / 8;
        let slice = bytes.get(start..start + frame_len).ok_or_else(short)?;
        let sample = info.sample_bytes();
        let big_endian = info.ts == "1.2.840.10008.1.2.2";
        if big_endian && info.bits_allocated > 8 && sample > word {
            // Samples wider than the words they were read as (OB data or
            // 32-bit samples read as OW): reverse the word order in each
            // sample to get little endian.
            let mut out = slice.to_vec();
            for s in out.chunks_exact_mut(sample) {
                reverse_units(s, word);
            }
            return Ok(Cow::Owned(out));
        }
        if info.bits_allocated == 1 && !frame_bits.is_multiple_of(8) {
            let mut out = slice.to_vec();
            mask_tail(&mut out, frame_bits);
            return Ok(Cow::Owned(out));
        }
        Ok(match bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[start..start + frame_len]),
            Cow::Owned(b) => Cow::Owned(b[start..start + frame_len].to_vec()),
        })
    }

    /// Frame boundaries of encapsulated pixel data, one span per frame.
    pub fn frame_spans(&self) -> Result<Vec<Span>, ApiError> {
        let Value::PixelSequence(seq) = &self.pixel else {
            return Err(ApiError::Internal("pixel data is not encapsulated".into()));
        };
        let fragments = seq.fragments();
        let frames = self.info.frames as usize;
        // Position of each fragment item relative to the first one.
        let mut positions = Vec::with_capacity(fragments.len());
        let mut pos = 0u64;
        for f in fragments {
            positions.push(pos);
            pos += 8 + f.len() as u64;
        }
        if let Some((offsets, lengths)) = self.extended_offset_table()
            && let Some(mut spans) = spans_from_offsets(&positions, &offsets, frames)
        {
            if let Some(lengths) = lengths.filter(|l| l.len() == frames) {
                for (span, len) in spans.iter_mut().zip(lengths) {
                    span.len = usize::try_from(len).ok();
                }
            }
            return Ok(spans);
        }
        let bot: Vec<u64> = seq.offset_table().iter().map(|&o| u64::from(o)).collect();
        if !bot.is_empty()
            && let Some(spans) = spans_from_offsets(&positions, &bot, frames)
        {
            return Ok(spans);
        }
        if fragments.len() == frames {
            return Ok((0..frames)
                .map(|i| Span {
                    fragments: i..i + 1,
                    skip: 0,
                    len: None,
                })
                .collect());
        }
        if frames == 1 && !fragments.is_empty() {
            return Ok(vec![Span {
                fragments: 0..fragments.len(),
                skip: 0,
                len: None,
            }]);
        }
        let starts: Vec<usize> = fragments
            .iter()
            .enumerate()
            .filter(|(_, f)| is_frame_start(f, &self.info.ts))
            .map(|(i, _)| i)
            .collect();
        if starts.len() == frames && starts.first() == Some(&0) {
            return Ok(starts
                .iter()
                .enumerate()
                .map(|(k, &s)| Span {
                    fragments: s..starts.get(k + 1).copied().unwrap_or(fragments.len()),
                    skip: 0,
                    len: None,
                })
                .collect());
        }
        if let Some(spans) = jpeg_frames_in_stream(fragments, frames, &self.info.ts) {
            return Ok(spans);
        }
        Err(ApiError::CannotRender(format!(
            "cannot locate the frames in {} fragments of {frames} frames (no offset table)",
            fragments.len()
        )))
    }

    /// The compressed bitstream of one frame.
    pub fn bitstream(&self, span: &Span) -> Cow<'_, [u8]> {
        let fragments = &self.fragments()[span.fragments.clone()];
        let total: usize = fragments.iter().map(Vec::len).sum();
        let start = span.skip.min(total);
        let end = span.len.map_or(total, |l| (start + l).min(total));
        if let [one] = fragments {
            return Cow::Borrowed(&one[start..end]);
        }
        // Copy only the part of the fragments inside start..end.
        let mut out = Vec::with_capacity(end - start);
        let mut pos = 0;
        for f in fragments {
            let (a, b) = (pos, pos + f.len());
            pos = b;
            if b <= start {
                continue;
            }
            if a >= end {
                break;
            }
            out.extend_from_slice(&f[start.max(a) - a..end.min(b) - a]);
        }
        Cow::Owned(out)
    }

    /// Decode one encapsulated frame to native little-endian interleaved
    /// samples (`decoded_frame_len` bytes). `index` is only for messages.
    pub fn decode_span(&self, span: &Span, index: usize) -> Result<Vec<u8>, ApiError> {
        if self.info.ts == RLE_LOSSLESS {
            let bitstream = self.bitstream(span);
            return decode_rle(&bitstream, &self.info).map_err(|m| {
                ApiError::CannotRender(format!("cannot decode RLE frame {}: {m}", index + 1))
            });
        }
        let bitstream = self.bitstream(span).into_owned();
        // Give the decoder a minimal one-frame, one-fragment object: it then
        // needs no offset table nor marker search of its own, and attributes
        // it does not need (windows, rescale, functional groups) cannot make
        // it fail.
        let mut one = DefaultDicomObject::new_empty_with_meta(self.obj.meta().clone());
        for tag in [
            tags::SAMPLES_PER_PIXEL,
            tags::PHOTOMETRIC_INTERPRETATION,
            tags::PLANAR_CONFIGURATION,
            tags::ROWS,
            tags::COLUMNS,
            tags::BITS_ALLOCATED,
            tags::BITS_STORED,
            tags::HIGH_BIT,
            tags::PIXEL_REPRESENTATION,
        ] {
            if let Some(e) = self.obj.get(tag) {
                one.put(e.clone());
            }
        }
        one.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("1"),
        ));
        one.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new_fragments(vec![bitstream]),
        ));
        let decoded = one
            .decode_pixel_data()
            .map(|px| px.into_data())
            .map_err(|e| {
                ApiError::CannotRender(format!(
                    "cannot decode frame {}: {}",
                    index + 1,
                    error_chain(&e)
                ))
            });
        let mut data = decoded?;
        let expected = self.info.decoded_frame_len();
        if data.len() < expected {
            return Err(ApiError::CannotRender(format!(
                "frame {} decoded to {} bytes, expected {expected}",
                index + 1,
                data.len()
            )));
        }
        data.truncate(expected);
        Ok(data)
    }

    /// Extended Offset Table and its lengths, if present.
    fn extended_offset_table(&self) -> Option<(Vec<u64>, Option<Vec<u64>>)> {
        let read = |tag| -> Option<Vec<u64>> {
            let e = self.obj.get(tag)?;
            let bytes = e.value().to_bytes().ok()?;
            if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
                return None;
            }
            Some(
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
        };
        let offsets = read(tags::EXTENDED_OFFSET_TABLE)?;
        Some((offsets, read(tags::EXTENDED_OFFSET_TABLE_LENGTHS)))
    }
}

/// JPEG / JPEG-LS frames that share fragments (several frames in one
/// fragment, no offset table): cut the fragments' concatenation before
/// each SOI that starts the stream or follows an EOI (and padding).
fn jpeg_frames_in_stream(fragments: &[Vec<u8>], frames: usize, ts: &str) -> Option<Vec<Span>> {
    if !matches!(
        classify(ts),
        Syntax::Encapsulated("image/jpeg" | "image/jls")
    ) {
        return None;
    }
    let stream: Vec<u8> = fragments.iter().flatten().copied().collect();
    let mut starts = Vec::with_capacity(frames);
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i..i + 3] == [0xFF, 0xD8, 0xFF] {
            let mut k = i;
            while k > 0 && stream[k - 1] == 0 {
                k -= 1;
            }
            if i == 0 || (k >= 2 && stream[k - 2..k] == [0xFF, 0xD9]) {
                starts.push(i);
            }
        }
        i += 1;
    }
    if starts.len() != frames || starts.first() != Some(&0) {
        return None;
    }
    Some(
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| Span {
                fragments: 0..fragments.len(),
                skip: s,
                len: starts.get(k + 1).map(|&next| next - s),
            })
            .collect(),
    )
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// An error and its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Decode one RLE Lossless frame (PS3.5 Annex G) to interleaved
/// little-endian samples: any samples per pixel and 8/16/32/64-bit
/// samples (each byte plane of each sample, most significant first, is one
/// segment).
pub(crate) fn decode_rle(frame: &[u8], info: &PixelInfo) -> Result<Vec<u8>, String> {
    let pixels = info.pixels();
    let bps = info.sample_bytes();
    let segments = bps * info.samples as usize;
    if info.bits_allocated == 1 || segments > 15 {
        return Err(format!("{segments} segments are not possible in RLE"));
    }
    if frame.len() < 64 {
        return Err("frame shorter than the RLE header".into());
    }
    let word = |i: usize| u32::from_le_bytes(frame[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let count = word(0) as usize;
    if count != segments {
        return Err(format!("{count} segments, expected {segments}"));
    }
    let offsets: Vec<usize> = (1..=count).map(|i| word(i) as usize).collect();
    let mut out = vec![0u8; pixels * segments];
    let mut plane = vec![0u8; pixels];
    for (seg, &start) in offsets.iter().enumerate() {
        let end = offsets.get(seg + 1).copied().unwrap_or(frame.len());
        if start < 64 || start > end || end > frame.len() {
            return Err(format!("bad offset of segment {}", seg + 1));
        }
        unpackbits(&frame[start..end], &mut plane);
        // Segment `seg` is the byte at little-endian position
        // `bps - 1 - seg % bps` of sample `seg / bps`.
        let lane = (seg / bps) * bps + (bps - 1 - seg % bps);
        for (dst, &v) in out[lane..].iter_mut().step_by(segments).zip(plane.iter()) {
            *dst = v;
        }
    }
    Ok(out)
}

/// PackBits decoding into `out` (filled up to its length; missing bytes
/// stay 0, surplus input is ignored).
fn unpackbits(src: &[u8], out: &mut [u8]) {
    out.fill(0);
    let (mut i, mut o) = (0, 0);
    while i < src.len() && o < out.len() {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let len = (n as usize + 1).min(src.len() - i).min(out.len() - o);
            out[o..o + len].copy_from_slice(&src[i..i + len]);
            i += n as usize + 1;
            o += len;
        } else if n != -128 {
            let len = ((1 - isize::from(n)) as usize).min(out.len() - o);
            if let Some(&b) = src.get(i) {
                out[o..o + len].fill(b);
            }
            i += 1;
            o += len;
        }
    }
}

/// Frames from an offset table (BOT or EOT): each offset must be the
/// position of a fragment item, increasing, first one 0.
fn spans_from_offsets(positions: &[u64], offsets: &[u64], frames: usize) -> Option<Vec<Span>> {
    if offsets.len() != frames || offsets.first() != Some(&0) {
        return None;
    }
    let mut starts = Vec::with_capacity(frames);
    for w in offsets.windows(2) {
        if w[1] <= w[0] {
            return None;
        }
    }
    for &o in offsets {
        starts.push(positions.binary_search(&o).ok()?);
    }
    Some(
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| Span {
                fragments: s..starts.get(k + 1).copied().unwrap_or(positions.len()),
                skip: 0,
                len: None,
            })
            .collect(),
    )
}

/// Whether a fragment starts a new frame's codestream.
fn is_frame_start(fragment: &[u8], ts: &str) -> bool {
    match classify(ts) {
        Syntax::Encapsulated("image/jpeg" | "image/jls") => fragment.starts_with(&[0xFF, 0xD8]),
        Syntax::Encapsulated("image/jp2" | "image/jpx" | "image/jphc") => {
            fragment.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
                || fragment.starts_with(&[0, 0, 0, 0x0C, 0x6A, 0x50, 0x20, 0x20])
        }
        Syntax::Encapsulated("image/jxl") => {
            fragment.starts_with(&[0xFF, 0x0A])
                || fragment.starts_with(&[0, 0, 0, 0x0C, 0x4A, 0x58, 0x4C, 0x20])
        }
        _ => false,
    }
}

/// Reverse the order of `unit`-byte units in `sample` (units' own bytes
/// keep their order).
fn reverse_units(sample: &mut [u8], unit: usize) {
    if unit == 1 {
        sample.reverse();
        return;
    }
    let n = sample.len() / unit;
    for i in 0..n / 2 {
        let (a, b) = (i * unit, (n - 1 - i) * unit);
        for k in 0..unit {
            sample.swap(a + k, b + k);
        }
    }
}

/// Zero the bits of the last byte past `bits`.
fn mask_tail(out: &mut [u8], bits: usize) {
    let rem = bits % 8;
    if rem != 0
        && let Some(last) = out.last_mut()
    {
        *last &= (1u8 << rem) - 1;
    }
}

pub(crate) fn uint(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

pub(crate) fn string(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

/// All values of a decimal (DS/FD/...) attribute.
/// The first item of sequence `seq` for frame `index` of an enhanced
/// multi-frame object: in the Per-frame Functional Groups, else in the
/// Shared ones.
pub(crate) fn functional_group(
    obj: &InMemDicomObject,
    index: usize,
    seq: dicom_core::Tag,
) -> Option<&InMemDicomObject> {
    fn item_of(group: &InMemDicomObject, seq: dicom_core::Tag) -> Option<&InMemDicomObject> {
        group.get(seq)?.items()?.first()
    }
    let in_group = |group| item_of(group, seq);
    obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items()?.get(index))
        .and_then(in_group)
        .or_else(|| {
            obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .and_then(|e| e.items()?.first())
                .and_then(in_group)
        })
}

pub(crate) fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_media_types() {
        assert_eq!(
            classify("1.2.840.10008.1.2.4.50"),
            Syntax::Encapsulated("image/jpeg")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.70"),
            Syntax::Encapsulated("image/jpeg")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.80"),
            Syntax::Encapsulated("image/jls")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.91"),
            Syntax::Encapsulated("image/jp2")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.202"),
            Syntax::Encapsulated("image/jphc")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.5"),
            Syntax::Encapsulated("image/x-dicom-rle")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.102"),
            Syntax::Video("video/mp4")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.100"),
            Syntax::Video("video/mpeg")
        );
        assert_eq!(
            classify("1.2.840.10008.1.2.4.107"),
            Syntax::Video("video/H265")
        );
        assert_eq!(classify("1.2.840.10008.1.2.2"), Syntax::Native);
    }

    #[test]
    fn offsets_map_to_fragments() {
        // Fragments of 10, 4, 6 bytes: items at 0, 18, 30.
        let positions = [0, 18, 30];
        let spans = spans_from_offsets(&positions, &[0, 30], 2).unwrap();
        assert_eq!(spans[0].fragments, 0..2);
        assert_eq!(spans[1].fragments, 2..3);
        assert!(spans_from_offsets(&positions, &[0, 20], 2).is_none());
        assert!(spans_from_offsets(&positions, &[0], 2).is_none());
    }

    #[test]
    fn reverse_units_swaps_words() {
        let mut s = [1, 2, 3, 4];
        reverse_units(&mut s, 2);
        assert_eq!(s, [3, 4, 1, 2]);
        reverse_units(&mut s, 1);
        assert_eq!(s, [2, 1, 4, 3]);
    }

    #[test]
    fn unpackbits_literal_and_runs() {
        let mut out = [0u8; 8];
        // literal of 2, run of 4 x 7, no-op, literal of 1; one byte short.
        unpackbits(&[1, 10, 11, 0xFD, 7, 0x80, 0, 12], &mut out);
        assert_eq!(out, [10, 11, 7, 7, 7, 7, 12, 0]);
    }

    #[test]
    fn decodable_syntaxes() {
        assert!(can_decode("1.2.840.10008.1.2.4.50"));
        assert!(can_decode("1.2.840.10008.1.2.5"));
        assert!(can_decode("1.2.840.10008.1.2.1"));
        assert!(!can_decode("1.2.840.10008.1.2.4.90"));
        assert!(!can_decode("1.2.840.10008.1.2.4.102"));
    }
}
