//! Sending a stored instance in a transfer syntax the retrieve peer
//! accepted when it did not accept the stored one: which conversions are
//! allowed, which accepted context to use, and the conversion itself.
//!
//! Allowed, because they lose nothing:
//! - between the native syntaxes (Implicit VR LE, Explicit VR LE, Explicit
//!   VR BE, Deflated Explicit VR LE): the same elements, re-encoded;
//! - from a compressed syntax whose decoder is compiled in (dicom-pixeldata
//!   with `native`: the JPEG processes, JPEG Lossless, RLE) to a native one:
//!   the pixel data is decoded by dicom-pixeldata's `Transcode`. Decoding a
//!   lossy syntax (JPEG baseline/extended) yields native pixel data that
//!   does not look lossy: Lossy Image Compression (0028,2110) is set to
//!   "01" and the conversion is logged.
//!
//! Never: native to compressed, compressed to compressed, anything from a
//! syntax without a decoder (JPEG-LS, JPEG 2000, HTJ2K, MPEG...). Those
//! sub-operations fail, as they did before retrieval converted anything.
//!
//! The conversion parses the whole object and may decode images: CPU work,
//! run by the callers on the blocking pool ([`convert_blocking`]).

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub(crate) const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub(crate) const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub(crate) const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
pub(crate) const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// The native syntaxes, in the order a target is preferred among them.
const NATIVE: [&str; 4] = [
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
];

/// Encapsulated syntaxes that never discard information. Any other
/// encapsulated syntax may be lossy (JPEG baseline/extended, JPEG-LS near
/// lossless, JPEG 2000, MPEG...).
const LOSSLESS_ENCAPSULATED: [&str; 9] = [
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.80",  // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.201", // HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202", // HTJ2K with RPCL (Lossless Only)
    "1.2.840.10008.1.2.4.110", // JPEG XL Lossless
    "1.2.840.10008.1.2.5",     // RLE Lossless
    "1.2.840.10008.1.2.1.98",  // Encapsulated Uncompressed Explicit VR LE
];

/// How an instance stored in one syntax goes out in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conversion {
    /// Same syntax: the stored bytes go out untouched.
    AsStored,
    /// Native to native: the same elements, re-encoded.
    Reencode,
    /// Compressed to native: the pixel data is decoded. `lossy_source`:
    /// the stored pixel data was lossy-compressed.
    Decode { lossy_source: bool },
}

fn is_native(uid: &str) -> bool {
    NATIVE.contains(&uid)
}

/// Can an instance stored in `stored` go out in `target` without loss?
pub(crate) fn conversion(stored: &str, target: &str) -> Option<Conversion> {
    if stored == target {
        return Some(Conversion::AsStored);
    }
    if !is_native(target) {
        return None;
    }
    if is_native(stored) {
        return Some(Conversion::Reencode);
    }
    let ts = TransferSyntaxRegistry.get(stored)?;
    (ts.is_encapsulated_pixel_data() && ts.can_decode_all()).then_some(Conversion::Decode {
        lossy_source: !LOSSLESS_ENCAPSULATED.contains(&stored),
    })
}

/// Among the accepted presentation contexts `(id, transfer syntax)` for an
/// instance's SOP class, the one to send it on: its stored syntax if
/// accepted, else the first native syntax in [`NATIVE`] order it can be
/// converted to. `None`: no lossless conversion to any accepted syntax.
pub(crate) fn choose<'a>(
    stored: &str,
    accepted: impl IntoIterator<Item = (u8, &'a str)>,
) -> Option<(u8, &'a str, Conversion)> {
    let candidates: Vec<(u8, &str, Conversion)> = accepted
        .into_iter()
        .filter_map(|(id, ts)| conversion(stored, ts).map(|c| (id, ts, c)))
        .collect();
    let rank = |(_, ts, c): &(u8, &str, Conversion)| match c {
        Conversion::AsStored => 0,
        _ => 1 + NATIVE.iter().position(|n| n == ts).unwrap_or(NATIVE.len()),
    };
    candidates.into_iter().min_by_key(rank)
}

const PHOTOMETRIC_INTERPRETATION: Tag = Tag(0x0028, 0x0004);
const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
const PLANAR_CONFIGURATION: Tag = Tag(0x0028, 0x0006);
const LOSSY_IMAGE_COMPRESSION: Tag = Tag(0x0028, 0x2110);
const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// The data set of the Part-10 object `part10` (stored in `stored`),
/// encoded in `target`. Only for pairs [`conversion`] allows.
pub(crate) fn convert(part10: &[u8], stored: &str, target: &str) -> Result<Vec<u8>, String> {
    use dicom_pixeldata::Transcode;
    let conversion = conversion(stored, target)
        .ok_or_else(|| format!("no lossless conversion from {stored} to {target}"))?;
    let target_ts = TransferSyntaxRegistry
        .get(target)
        .ok_or_else(|| format!("transfer syntax {target} unknown"))?;
    let mut object = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(part10)
        .map_err(|e| format!("cannot parse the stored object: {e}"))?;
    if let Conversion::Decode { lossy_source } = conversion {
        object
            .transcode(target_ts)
            .map_err(|e| format!("cannot decode the pixel data of {stored}: {e}"))?;
        // dicom-pixeldata decodes colour to interleaved samples (and sets
        // RGB / MONOCHROME2) but leaves Planar Configuration as it was.
        let samples = object
            .get(SAMPLES_PER_PIXEL)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(1);
        if samples > 1 {
            object.put(DataElement::new(
                PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        // dicom-pixeldata labels decoded 8-bit samples OW; bytes are OB
        // (PS3.5 8.1.1), else a Big Endian target would need them swapped
        // in 16-bit words and a reader would pair the wrong samples.
        let bits_allocated = object
            .get(BITS_ALLOCATED)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(16);
        if bits_allocated <= 8
            && let Ok(pixels) = object.take_element(PIXEL_DATA)
        {
            object.put(DataElement::new(PIXEL_DATA, VR::OB, pixels.into_value()));
        }
        if lossy_source {
            // PS3.3 C.7.6.1.1.5: once lossy-compressed, always flagged.
            object.put(DataElement::new(LOSSY_IMAGE_COMPRESSION, VR::CS, "01"));
            tracing::info!(
                from = stored,
                to = target,
                photometric_interpretation = %object
                    .get(PHOTOMETRIC_INTERPRETATION)
                    .and_then(|e| e.to_str().ok())
                    .unwrap_or_default(),
                "retrieve: lossy-compressed pixel data decoded to a native transfer syntax \
                 (Lossy Image Compression set to 01)"
            );
        }
    }
    let mut out = Vec::new();
    object
        .write_dataset_with_ts(&mut out, target_ts)
        .map_err(|e| format!("cannot encode in {target}: {e}"))?;
    Ok(out)
}

/// [`convert`] on the blocking pool, keeping the caller's tracing span.
pub(crate) async fn convert_blocking(
    part10: bytes::Bytes,
    stored: String,
    target: String,
) -> Result<Vec<u8>, String> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| convert(&part10, &stored, &target)))
        .await
        .map_err(|e| format!("conversion task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
    const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
    const RLE: &str = "1.2.840.10008.1.2.5";
    const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";
    const J2K: &str = "1.2.840.10008.1.2.4.90";

    #[test]
    fn only_lossless_conversions_to_native_are_allowed() {
        assert_eq!(
            conversion(EXPLICIT_VR_BE, IMPLICIT_VR_LE),
            Some(Conversion::Reencode)
        );
        assert_eq!(
            conversion(DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE),
            Some(Conversion::Reencode)
        );
        assert_eq!(conversion(RLE, RLE), Some(Conversion::AsStored));
        assert_eq!(
            conversion(RLE, IMPLICIT_VR_LE),
            Some(Conversion::Decode {
                lossy_source: false
            })
        );
        assert_eq!(
            conversion(JPEG_BASELINE, EXPLICIT_VR_LE),
            Some(Conversion::Decode { lossy_source: true })
        );
        assert_eq!(
            conversion(JPEG_LOSSLESS_SV1, EXPLICIT_VR_LE),
            Some(Conversion::Decode {
                lossy_source: false
            })
        );
        // Never native to compressed, never compressed to compressed.
        assert_eq!(conversion(EXPLICIT_VR_LE, JPEG_BASELINE), None);
        assert_eq!(conversion(EXPLICIT_VR_LE, RLE), None);
        assert_eq!(conversion(RLE, JPEG_BASELINE), None);
        // No decoder compiled in for JPEG-LS and JPEG 2000.
        assert_eq!(conversion(JPEG_LS, EXPLICIT_VR_LE), None);
        assert_eq!(conversion(J2K, IMPLICIT_VR_LE), None);
        assert_eq!(conversion("1.2.3.unknown", IMPLICIT_VR_LE), None);
    }

    #[test]
    fn the_stored_syntax_wins_then_explicit_then_implicit() {
        let accepted = [(1, IMPLICIT_VR_LE), (3, EXPLICIT_VR_LE), (5, RLE)];
        assert_eq!(choose(RLE, accepted), Some((5, RLE, Conversion::AsStored)));
        assert_eq!(
            choose(EXPLICIT_VR_BE, accepted),
            Some((3, EXPLICIT_VR_LE, Conversion::Reencode))
        );
        assert_eq!(
            choose(EXPLICIT_VR_BE, [(1, IMPLICIT_VR_LE), (7, JPEG_BASELINE)]),
            Some((1, IMPLICIT_VR_LE, Conversion::Reencode))
        );
        assert_eq!(choose(EXPLICIT_VR_LE, [(7, JPEG_BASELINE)]), None);
        assert_eq!(choose(J2K, accepted), None);
    }
}
