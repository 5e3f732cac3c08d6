//! A cheap structural check of an encoded object before it is parsed.
//!
//! The DICOM parser allocates a buffer of whatever length an element header
//! declares before reading it; a few corrupt bytes (or a hostile peer) can
//! declare gigabytes in a 100-byte file. This walker reads only element
//! headers, without allocating, and refuses any element, item or sequence
//! whose declared length does not fit in the bytes that are actually there.
//! It is written by hand because dicom-parser offers no header-only walk.

use dicom_core::dictionary::DataDictionary;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
/// Nesting deeper than this is refused (real objects nest a handful deep).
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

struct Walker<'a> {
    data: &'a [u8],
    pos: usize,
    /// The top-level Pixel Data element, once seen.
    pixel_data: Option<PixelData>,
}

/// The top-level Pixel Data element of a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelData {
    pub vr: VR,
    /// Where its value lies in the data set, for a native (defined-length)
    /// value; `None` for encapsulated fragments.
    pub value: Option<std::ops::Range<usize>>,
}

type Check<T> = Result<T, String>;

impl<'a> Walker<'a> {
    fn u16(&mut self, enc: Encoding) -> Check<u16> {
        let b = self
            .data
            .get(self.pos..self.pos + 2)
            .ok_or_else(|| format!("data ends inside an element header at byte {}", self.pos))?;
        self.pos += 2;
        Ok(if enc.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&mut self, enc: Encoding) -> Check<u32> {
        let b = self
            .data
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| format!("data ends inside an element header at byte {}", self.pos))?;
        self.pos += 4;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn skip(&mut self, len: u32, end: usize, what: (u16, u16)) -> Check<()> {
        let len = len as usize;
        if len > end.saturating_sub(self.pos) {
            return Err(format!(
                "element ({:04X},{:04X}) declares {len} bytes but only {} remain",
                what.0,
                what.1,
                end.saturating_sub(self.pos)
            ));
        }
        self.pos += len;
        Ok(())
    }

    /// Walk elements until `end`, or until an item delimiter when
    /// `until_item_end` (an undefined-length item).
    fn elements(
        &mut self,
        enc: Encoding,
        end: usize,
        until_item_end: bool,
        depth: usize,
    ) -> Check<()> {
        if depth > MAX_DEPTH {
            return Err("sequences nested too deeply".into());
        }
        while self.pos < end {
            let tag = (self.u16(enc)?, self.u16(enc)?);
            if tag == ITEM_END {
                self.u32(enc)?;
                return if until_item_end {
                    Ok(())
                } else {
                    Err(format!("unexpected item delimiter at byte {}", self.pos))
                };
            }
            if tag.0 == 0xFFFE {
                return Err(format!(
                    "unexpected ({:04X},{:04X}) at byte {}",
                    tag.0, tag.1, self.pos
                ));
            }
            let (vr, len) = if enc.explicit {
                let vr_bytes = [self.u8()?, self.u8()?];
                let vr = VR::from_binary(vr_bytes);
                match vr {
                    Some(
                        VR::OB
                        | VR::OD
                        | VR::OF
                        | VR::OL
                        | VR::OV
                        | VR::OW
                        | VR::SQ
                        | VR::SV
                        | VR::UC
                        | VR::UN
                        | VR::UR
                        | VR::UT
                        | VR::UV,
                    ) => {
                        self.u16(enc)?;
                        (vr, self.u32(enc)?)
                    }
                    Some(_) => (vr, u32::from(self.u16(enc)?)),
                    None => {
                        return Err(format!(
                            "element ({:04X},{:04X}) has an invalid VR {:?}",
                            tag.0,
                            tag.1,
                            String::from_utf8_lossy(&vr_bytes)
                        ));
                    }
                }
            } else {
                let vr = StandardDataDictionary
                    .by_tag(Tag(tag.0, tag.1))
                    .map(|e| e.vr.relaxed());
                (vr, self.u32(enc)?)
            };
            let is_pixel_data = tag == (0x7FE0, 0x0010);
            if is_pixel_data && depth == 0 {
                let value = (len != UNDEFINED && len as usize <= end.saturating_sub(self.pos))
                    .then(|| self.pos..self.pos + len as usize);
                self.pixel_data = Some(PixelData {
                    vr: match vr {
                        Some(vr) if enc.explicit => vr,
                        // Implicit VR: OW (PS3.5 A.1); encapsulated: OB.
                        _ if len == UNDEFINED => VR::OB,
                        _ => VR::OW,
                    },
                    value,
                });
            }
            if len == UNDEFINED {
                // Undefined length: a sequence, encapsulated pixel data, or UN
                // holding an implicit-VR sequence.
                if enc.explicit && vr == Some(VR::UN) {
                    // Valid (CP-246), but dicom-parser 0.10 reads the first
                    // item tag of such an element as a length and allocates
                    // gigabytes: refuse it clearly instead.
                    return Err(format!(
                        "element ({:04X},{:04X}) is UN with undefined length, which is not supported",
                        tag.0, tag.1
                    ));
                }
                let items_are_fragments = is_pixel_data || matches!(vr, Some(VR::OB | VR::OW));
                let inner = if vr == Some(VR::UN) {
                    Encoding {
                        explicit: false,
                        big_endian: false,
                    }
                } else {
                    enc
                };
                self.items(inner, end, None, items_are_fragments, depth + 1)?;
            } else if vr == Some(VR::SQ) {
                let seq_end = self.pos + len as usize;
                if len as usize > end.saturating_sub(self.pos) {
                    return self.skip(len, end, tag);
                }
                self.items(enc, seq_end, Some(seq_end), false, depth + 1)?;
            } else {
                self.skip(len, end, tag)?;
            }
        }
        if until_item_end {
            return Err("data ends inside an item without its delimiter".into());
        }
        Ok(())
    }

    fn u8(&mut self) -> Check<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| format!("data ends inside an element header at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    /// Walk the items of a sequence (or fragments of encapsulated pixel
    /// data), up to `defined_end` or a sequence delimiter.
    fn items(
        &mut self,
        enc: Encoding,
        end: usize,
        defined_end: Option<usize>,
        fragments: bool,
        depth: usize,
    ) -> Check<()> {
        loop {
            if let Some(seq_end) = defined_end
                && self.pos >= seq_end
            {
                return Ok(());
            }
            if self.pos >= end {
                return Err("data ends inside a sequence without its delimiter".into());
            }
            let tag = (self.u16(enc)?, self.u16(enc)?);
            let len = self.u32(enc)?;
            match tag {
                SEQUENCE_END if defined_end.is_none() => return Ok(()),
                ITEM if len == UNDEFINED && !fragments => self.elements(enc, end, true, depth)?,
                ITEM if len == UNDEFINED => {
                    return Err("a pixel data fragment has no length".into());
                }
                ITEM if fragments => self.skip(len, end, tag)?,
                ITEM => {
                    if len as usize > end.saturating_sub(self.pos) {
                        return self.skip(len, end, tag);
                    }
                    let item_end = self.pos + len as usize;
                    self.elements(enc, item_end, false, depth)?;
                }
                other => {
                    return Err(format!(
                        "expected an item, found ({:04X},{:04X}) at byte {}",
                        other.0, other.1, self.pos
                    ));
                }
            }
        }
    }
}

/// How a transfer syntax encodes the data set (deflate is undone first).
fn encoding_of(transfer_syntax_uid: &str) -> Encoding {
    match transfer_syntax_uid {
        "1.2.840.10008.1.2" => Encoding {
            explicit: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => Encoding {
            explicit: true,
            big_endian: true,
        },
        _ => Encoding {
            explicit: true,
            big_endian: false,
        },
    }
}

/// Whether the data set of this transfer syntax is deflated.
pub fn is_deflated(transfer_syntax_uid: &str) -> bool {
    matches!(
        transfer_syntax_uid,
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95"
    )
}

/// Check the element structure of a (non-deflated) data set; returns the VR
/// of its Pixel Data element, if it has one.
pub fn check_dataset(dataset: &[u8], transfer_syntax_uid: &str) -> Check<Option<PixelData>> {
    let mut walker = Walker {
        data: dataset,
        pos: 0,
        pixel_data: None,
    };
    walker.elements(encoding_of(transfer_syntax_uid), dataset.len(), false, 0)?;
    Ok(walker.pixel_data)
}

/// Check the file meta group that follows `DICM` and return its transfer
/// syntax and where the data set starts.
pub fn check_meta(after_magic: &[u8]) -> Check<(String, usize)> {
    let enc = Encoding {
        explicit: true,
        big_endian: false,
    };
    let mut walker = Walker {
        data: after_magic,
        pos: 0,
        pixel_data: None,
    };
    let mut transfer_syntax = None;
    while walker.pos + 4 <= after_magic.len() {
        let group = u16::from_le_bytes([after_magic[walker.pos], after_magic[walker.pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let tag = (walker.u16(enc)?, walker.u16(enc)?);
        let vr = [walker.u8()?, walker.u8()?];
        let len = match &vr {
            b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR" => {
                walker.u16(enc)?;
                walker.u32(enc)?
            }
            _ => u32::from(walker.u16(enc)?),
        };
        let value_start = walker.pos;
        walker.skip(len, after_magic.len(), tag)?;
        if tag == (0x0002, 0x0010) {
            let value = &after_magic[value_start..walker.pos];
            transfer_syntax = Some(
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .to_owned(),
            );
        }
    }
    let ts = transfer_syntax.ok_or("the file meta group has no TransferSyntaxUID")?;
    Ok((ts, walker.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_le(elements: &[(u16, u16, &[u8; 2], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (g, e, vr, value) in elements {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
            out.extend_from_slice(*vr);
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    #[test]
    fn accepts_well_formed_and_refuses_lengths_that_do_not_fit() {
        let ok = explicit_le(&[
            (0x0008, 0x0016, b"UI", b"1.2\0"),
            (0x0010, 0x0010, b"PN", b"DOE^J "),
        ]);
        assert!(check_dataset(&ok, "1.2.840.10008.1.2.1").is_ok());
        let mut lying = ok.clone();
        lying.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFE, 0xFF, 0xFF, 0xDF,
        ]);
        let err = check_dataset(&lying, "1.2.840.10008.1.2.1").unwrap_err();
        assert!(err.contains("declares"), "{err}");
        assert!(check_dataset(&ok[..ok.len() - 3], "1.2.840.10008.1.2.1").is_err());
    }

    #[test]
    fn undefined_length_sequence_without_delimiter_is_refused() {
        let mut data = Vec::new();
        data.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(check_dataset(&data, "1.2.840.10008.1.2.1").is_err());
        data.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(check_dataset(&data, "1.2.840.10008.1.2.1").is_ok());
    }
}
