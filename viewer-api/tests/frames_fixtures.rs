//! Frame extraction from generated fixtures (pacs-fixtures).

use pacs_fixtures::{Kind, single, ts};
use pacs_viewer_api::ApiError;
use pacs_viewer_api::frames::{Frame, FrameWant, extract_frames};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

fn frames(bytes: &[u8], numbers: &[u32], want: FrameWant) -> Vec<Frame> {
    extract_frames(bytes, numbers, want).unwrap()
}

#[test]
fn big_endian_frame_equals_swapped_little_endian() {
    for kind in [Kind::Ct, Kind::Mr, Kind::Cr] {
        let le = &frames(
            &single(kind, ts::EXPLICIT_VR_LE, 9).bytes,
            &[1],
            FrameWant::Original,
        )[0];
        let be_file = single(kind, ts::EXPLICIT_VR_BE, 9);
        let be = &frames(&be_file.bytes, &[1], FrameWant::Original)[0];
        assert_eq!(be.media_type, "application/octet-stream");
        assert_eq!(be.transfer_syntax.as_deref(), Some(EXPLICIT_LE));
        assert_eq!(le.data.len() % 2, 0);
        assert!(be.data == le.data, "{kind}: big endian frame differs");
        // The big-endian file really holds swapped words: the first
        // non-zero LE word appears byte-swapped in the file.
        let k = le
            .data
            .chunks_exact(2)
            .position(|w| w[0] != w[1])
            .expect("a word with distinct bytes");
        let word = &le.data[2 * k..2 * k + 2];
        let swapped = [word[1], word[0]];
        assert!(
            be_file.bytes.windows(2).any(|w| w == swapped),
            "swapped word in the file"
        );
    }
}

#[test]
fn native_syntaxes_agree() {
    let reference = &frames(
        &single(Kind::Ct, ts::EXPLICIT_VR_LE, 2).bytes,
        &[1],
        FrameWant::Original,
    )[0];
    assert_eq!(reference.data.len(), 512 * 512 * 2);
    for syntax in [ts::IMPLICIT_VR_LE, ts::DEFLATED_EXPLICIT_VR_LE] {
        let f = &frames(
            &single(Kind::Ct, syntax, 2).bytes,
            &[1],
            FrameWant::Original,
        )[0];
        assert!(f.data == reference.data, "{syntax}");
        assert_eq!(f.transfer_syntax.as_deref(), Some(EXPLICIT_LE));
    }
    // RLE decoded to native equals the native frame.
    let rle = single(Kind::Ct, ts::RLE_LOSSLESS, 2);
    let f = &frames(&rle.bytes, &[1], FrameWant::Uncompressed)[0];
    assert_eq!(f.media_type, "application/octet-stream");
    assert_eq!(f.transfer_syntax.as_deref(), Some(EXPLICIT_LE));
    assert!(f.data == reference.data, "RLE decoded");
}

#[test]
fn multiframe_count_and_order() {
    let us = single(Kind::Us, ts::EXPLICIT_VR_LE, 4);
    let all = frames(&us.bytes, &[1, 2], FrameWant::Original);
    assert_eq!(all.len(), 2);
    for f in &all {
        assert_eq!(f.data.len(), 640 * 480 * 3);
    }
    assert!(all[0].data != all[1].data);
    let rev = frames(&us.bytes, &[2, 1, 2], FrameWant::Uncompressed);
    assert_eq!(rev.len(), 3);
    assert!(rev[0].data == all[1].data && rev[1].data == all[0].data && rev[2].data == all[1].data);
    // Pixel Data is the last element: the file ends with frame 1, frame 2.
    let fl = all[0].data.len();
    let tail = &us.bytes[us.bytes.len() - 2 * fl..];
    assert!(tail[..fl] == all[0].data[..] && tail[fl..] == all[1].data[..]);
}

#[test]
fn jpeg_original_frames_are_jpeg_bitstreams() {
    let us = single(Kind::Us, ts::JPEG_BASELINE, 4);
    let fs = frames(&us.bytes, &[1, 2], FrameWant::Original);
    assert_eq!(fs.len(), 2);
    for f in &fs {
        assert_eq!(f.media_type, "image/jpeg");
        assert_eq!(f.transfer_syntax.as_deref(), Some(ts::JPEG_BASELINE));
        assert!(f.data.starts_with(&[0xFF, 0xD8, 0xFF]), "SOI");
        let end = f.data.len() - if f.data.ends_with(&[0]) { 1 } else { 0 };
        assert_eq!(&f.data[end - 2..end], &[0xFF, 0xD9], "EOI");
        // A standalone JPEG: decodes at the frame size.
        let img = image::load_from_memory_with_format(&f.data, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (640, 480));
    }
    assert!(fs[0].data != fs[1].data);
    // Order: frame 2 asked first comes first.
    let swapped = frames(&us.bytes, &[2, 1], FrameWant::Original);
    assert!(swapped[0].data == fs[1].data && swapped[1].data == fs[0].data);
    // Decoded: RGB samples close to the native original.
    let native = frames(
        &single(Kind::Us, ts::EXPLICIT_VR_LE, 4).bytes,
        &[2],
        FrameWant::Original,
    );
    let decoded = frames(&us.bytes, &[2], FrameWant::Uncompressed);
    assert_eq!(decoded[0].media_type, "application/octet-stream");
    assert_eq!(decoded[0].data.len(), 640 * 480 * 3);
    let diff: u64 = decoded[0]
        .data
        .iter()
        .zip(native[0].data.iter())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / decoded[0].data.len() as f64;
    assert!(mean < 6.0, "mean abs difference {mean}");
}

#[test]
fn rle_original_frames_have_rle_headers() {
    // US RGB 8-bit: 3 segments per frame; CT 16-bit: 2.
    for (kind, segments, frames_n) in [(Kind::Us, 3u32, 2u32), (Kind::Ct, 2, 1)] {
        let f = single(kind, ts::RLE_LOSSLESS, 6);
        let numbers: Vec<u32> = (1..=frames_n).collect();
        let fs = frames(&f.bytes, &numbers, FrameWant::Original);
        assert_eq!(fs.len(), frames_n as usize);
        for fr in &fs {
            assert_eq!(fr.media_type, "image/x-dicom-rle");
            assert_eq!(fr.transfer_syntax.as_deref(), Some(ts::RLE_LOSSLESS));
            assert_eq!(
                u32::from_le_bytes(fr.data[0..4].try_into().unwrap()),
                segments
            );
            assert_eq!(u32::from_le_bytes(fr.data[4..8].try_into().unwrap()), 64);
        }
        if frames_n == 2 {
            assert!(fs[0].data != fs[1].data);
            // Decoded RLE US (stored planar 1) comes out interleaved and
            // equals the native (planar 0) frames.
            let native = frames(
                &single(kind, ts::EXPLICIT_VR_LE, 6).bytes,
                &[1, 2],
                FrameWant::Original,
            );
            let decoded = frames(&f.bytes, &[1, 2], FrameWant::Uncompressed);
            assert!(decoded[0].data == native[0].data && decoded[1].data == native[1].data);
        }
    }
}

#[test]
fn out_of_range_and_missing_pixel_data() {
    let us = single(Kind::Us, ts::RLE_LOSSLESS, 4);
    for n in [0u32, 3, 1000] {
        match extract_frames(&us.bytes, &[1, n], FrameWant::Original) {
            Err(ApiError::NotFound(m)) => assert!(m.contains(&format!("frame {n}")), "{m}"),
            other => panic!("frame {n}: {other:?}"),
        }
    }
    let ct = single(Kind::Ct, ts::EXPLICIT_VR_BE, 4);
    assert!(matches!(
        extract_frames(&ct.bytes, &[2], FrameWant::Uncompressed),
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        extract_frames(&ct.bytes, &[], FrameWant::Original),
        Err(ApiError::BadRequest(_))
    ));
    for kind in [Kind::Sr, Kind::Pdf] {
        let f = single(kind, ts::EXPLICIT_VR_LE, 1);
        assert!(matches!(
            extract_frames(&f.bytes, &[1], FrameWant::Original),
            Err(ApiError::NotFound(m)) if m.contains("no pixel data")
        ));
    }
}

/// The US JPEG fixture rewritten with both frames in one fragment and no
/// offset table.
fn jpeg_frames_in_one_fragment() -> Vec<u8> {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let us = single(Kind::Us, ts::JPEG_BASELINE, 4);
    let mut obj = dicom_object::OpenFileOptions::new()
        .from_reader(&us.bytes[..])
        .unwrap();
    let Value::PixelSequence(seq) = obj.get(tags::PIXEL_DATA).unwrap().value().clone() else {
        panic!("encapsulated")
    };
    assert_eq!(seq.fragments().len(), 2);
    let joined: Vec<u8> = seq.fragments().iter().flatten().copied().collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new_fragments(vec![joined]),
    ));
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

#[test]
fn jpeg_frames_sharing_one_fragment_are_split_at_soi() {
    let one = jpeg_frames_in_one_fragment();
    let us = single(Kind::Us, ts::JPEG_BASELINE, 4);
    let expected = frames(&us.bytes, &[1, 2], FrameWant::Original);
    let got = frames(&one, &[1, 2], FrameWant::Original);
    assert!(got[0].data == expected[0].data, "frame 1");
    assert!(got[1].data == expected[1].data, "frame 2");
    let decoded = frames(&one, &[2], FrameWant::Uncompressed);
    let reference = frames(&us.bytes, &[2], FrameWant::Uncompressed);
    assert!(decoded[0].data == reference[0].data);
}
