//! Frames and renderings of pydicom's bundled sample files, checked
//! against pydicom itself (`$PACS_TEST_PYTHON` with pydicom installed).
//!
//! Without `PACS_TEST_PYTHON` these tests are skipped, unless
//! `PACS_TEST_REQUIRE_PEERS` is set: then a missing peer fails them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use pacs_viewer_api::ApiError;
use pacs_viewer_api::frames::{FrameWant, can_decode, extract_frames};
use pacs_viewer_api::render::{ImageFormat, RenderParams, render};
use sha2::{Digest, Sha256};

fn python() -> Option<String> {
    match std::env::var("PACS_TEST_PYTHON") {
        Ok(p) if !p.trim().is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
                "PACS_TEST_REQUIRE_PEERS is set but PACS_TEST_PYTHON is not"
            );
            eprintln!("skipped: PACS_TEST_PYTHON is not set");
            None
        }
    }
}

fn run_python(py: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {py}: {e}"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// pydicom's bundled test files directory.
fn test_files(py: &str) -> PathBuf {
    let dir = run_python(
        py,
        "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        &[],
    );
    PathBuf::from(dir.trim())
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// For each file: the SHA-256 of every frame as pydicom sees it (native:
/// the Pixel Data slice in little endian; encapsulated: the frames of
/// `pydicom.encaps.generate_frames`).
const EXPECTED_FRAMES: &str = r#"
import hashlib, json, os, sys
import pydicom
from pydicom.encaps import generate_frames
d = os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')
out = {}
for name in sys.argv[1:]:
    ds = pydicom.dcmread(os.path.join(d, name))
    n = int(ds.get('NumberOfFrames', 1) or 1)
    tsu = ds.file_meta.TransferSyntaxUID
    frames = []
    if tsu.is_encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    else:
        pd = ds.PixelData
        ba = ds.BitsAllocated
        pix = ds.Rows * ds.Columns
        nsamp = pix * 2 if ds.PhotometricInterpretation == 'YBR_FULL_422' else pix * ds.SamplesPerPixel
        bits = nsamp * ba
        if not tsu.is_little_endian and ba == 8 and ds['PixelData'].VR == 'OW':
            pd = b''.join(pd[k:k + 2][::-1] for k in range(0, len(pd), 2))
        for i in range(n):
            if ba == 1:
                v = (int.from_bytes(pd, 'little') >> (i * bits)) & ((1 << bits) - 1)
                fb = v.to_bytes((bits + 7) // 8, 'little')
            else:
                fb = pd[i * bits // 8:(i + 1) * bits // 8]
                if not tsu.is_little_endian and ba > 8:
                    w = ba // 8
                    fb = b''.join(fb[k:k + w][::-1] for k in range(0, len(fb), w))
            frames.append(fb)
    out[name] = {'ts': str(tsu), 'frames': [hashlib.sha256(f).hexdigest() for f in frames]}
print(json.dumps(out))
"#;

const FILES: &[&str] = &[
    "CT_small.dcm",
    "ExplVR_BigEnd.dcm",
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_ybr_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
    "rtdose.dcm",
    "rtdose_expb.dcm",
    "rtdose_rle.dcm",
    "693_J2KI.dcm",
    "JPEGLSNearLossless_16.dcm",
];

/// Files of decodable syntaxes that this build still cannot decode.
const KNOWN_GAPS: &[(&str, &str)] = &[
    (
        "JPEG-lossy.dcm",
        "12-bit JPEG Extended: jpeg-decoder has no 12-bit DCT",
    ),
    (
        "JPGExtended.dcm",
        "12-bit JPEG Extended: jpeg-decoder has no 12-bit DCT",
    ),
];

#[derive(serde::Deserialize)]
struct Expected {
    ts: String,
    frames: Vec<String>,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn original_frames_match_pydicom() {
    let Some(py) = python() else { return };
    let dir = test_files(&py);
    let json = run_python(&py, EXPECTED_FRAMES, FILES);
    let expected: BTreeMap<String, Expected> = serde_json::from_str(&json).unwrap();
    assert_eq!(expected.len(), FILES.len());
    for (name, exp) in &expected {
        let bytes = read(&dir, name);
        let numbers: Vec<u32> = (1..=exp.frames.len() as u32).collect();
        let frames = extract_frames(&bytes, &numbers, FrameWant::Original)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(frames.len(), exp.frames.len(), "{name}: frame count");
        for (i, (f, h)) in frames.iter().zip(&exp.frames).enumerate() {
            assert_eq!(
                &sha(&f.data),
                h,
                "{name}: frame {} differs from pydicom",
                i + 1
            );
            let native = matches!(
                exp.ts.as_str(),
                "1.2.840.10008.1.2"
                    | "1.2.840.10008.1.2.1"
                    | "1.2.840.10008.1.2.2"
                    | "1.2.840.10008.1.2.1.99"
            );
            if native {
                assert_eq!(f.media_type, "application/octet-stream", "{name}");
                assert_eq!(f.transfer_syntax.as_deref(), Some("1.2.840.10008.1.2.1"));
            } else {
                assert_eq!(
                    f.transfer_syntax.as_deref(),
                    Some(exp.ts.as_str()),
                    "{name}"
                );
            }
        }
        // One past the end is not found.
        let past = exp.frames.len() as u32 + 1;
        assert!(
            matches!(
                extract_frames(&bytes, &[past], FrameWant::Original),
                Err(ApiError::NotFound(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn decoded_frames_agree_across_syntaxes() {
    let Some(py) = python() else { return };
    let dir = test_files(&py);
    let groups: &[&[&str]] = &[
        &[
            "MR_small.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_RLE.dcm",
        ],
        &["rtdose.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm"],
        &["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"],
    ];
    for group in groups {
        let all: Vec<Vec<bytes::Bytes>> = group
            .iter()
            .map(|name| {
                let bytes = read(&dir, name);
                let n = if name.starts_with("rtdose") { 15 } else { 1 };
                let numbers: Vec<u32> = (1..=n).collect();
                extract_frames(&bytes, &numbers, FrameWant::Uncompressed)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                    .into_iter()
                    .map(|f| f.data)
                    .collect()
            })
            .collect();
        for (name, frames) in group.iter().zip(&all).skip(1) {
            assert!(frames == &all[0], "{name} differs from {}", group[0]);
        }
    }
}

#[test]
fn every_sample_renders_or_says_why() {
    let Some(py) = python() else { return };
    let dir = test_files(&py);
    for name in FILES {
        let bytes = read(&dir, name);
        let ts = extract_frames(&bytes, &[1], FrameWant::Original)
            .unwrap()
            .remove(0)
            .transfer_syntax
            .unwrap();
        let mut p = RenderParams::from_query(&[], ImageFormat::Png).unwrap();
        p.frame = 1;
        match render(&bytes, &p) {
            Ok(png) => {
                let img = image::load_from_memory(&png).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(img.width() > 0 && img.height() > 0);
            }
            Err(ApiError::CannotRender(m)) => {
                // Only syntaxes without a decoder in this build, and the
                // known gaps of the decoders it has, may refuse.
                let stored = name_ts(&dir, name, &py);
                let known_gap = KNOWN_GAPS.iter().any(|(n, _)| n == name);
                assert!(
                    !can_decode(&stored) || known_gap,
                    "{name} ({stored}, frame ts {ts}): {m}"
                );
            }
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
}

fn name_ts(dir: &std::path::Path, name: &str, py: &str) -> String {
    let _ = dir;
    run_python(
        py,
        "import os, sys, pydicom; d = os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'); print(pydicom.dcmread(os.path.join(d, sys.argv[1])).file_meta.TransferSyntaxUID)",
        &[name],
    )
    .trim()
    .to_string()
}

#[test]
fn renderings_agree_across_syntaxes() {
    let Some(py) = python() else { return };
    let dir = test_files(&py);
    let png = |name: &str, frame: u32| {
        let mut p = RenderParams::from_query(&[], ImageFormat::Png).unwrap();
        p.frame = frame;
        image::load_from_memory(
            &render(&read(&dir, name), &p).unwrap_or_else(|e| panic!("{name}: {e:?}")),
        )
        .unwrap()
    };
    let mr = png("MR_small.dcm", 1);
    assert_eq!((mr.width(), mr.height()), (64, 64));
    for other in [
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_implicit.dcm",
    ] {
        assert!(png(other, 1) == mr, "{other}");
    }
    let rt = png("rtdose.dcm", 8);
    for other in ["rtdose_expb.dcm", "rtdose_rle.dcm"] {
        assert!(png(other, 8) == rt, "{other}");
    }
    let rgb = png("SC_rgb_small_odd.dcm", 1);
    assert!(png("SC_rgb_small_odd_big_endian.dcm", 1) == rgb);
    // Colour JPEGs (YBR_FULL_422 multi-frame) come out as RGB images.
    let ybr = png("examples_ybr_color.dcm", 30);
    assert_eq!(ybr.color(), image::ColorType::Rgb8);
    assert_eq!((ybr.width(), ybr.height()), (320, 240));
    // The RGB reference picture in its YBR_FULL_422 uncompressed form.
    let y = png("SC_ybr_full_422_uncompressed.dcm", 1).to_rgb8();
    let r = png("SC_rgb_rle.dcm", 1).to_rgb8();
    let diff: u64 = y
        .as_raw()
        .iter()
        .zip(r.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / y.as_raw().len() as f64;
    assert!(mean < 8.0, "YBR_FULL_422 vs RGB mean difference {mean}");
}
