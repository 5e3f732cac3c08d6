//! Rendering times, printed (no assertions on time): run with
//! `cargo test --release -p pacs-viewer-api --test render_timing -- --ignored --nocapture`.

use std::time::Instant;

use pacs_fixtures::{DatasetSpec, Kind, single, ts};
use pacs_viewer_api::render::{ImageFormat, RenderParams, render, thumbnail};

fn time(label: &str, bytes: &[u8], params: &RenderParams) {
    let t = Instant::now();
    let out = render(bytes, params).unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    for _ in 0..5 {
        render(bytes, params).unwrap();
    }
    println!(
        "{label}: first {:.1} ms, then {:.1} ms each, {} bytes",
        first.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3 / 5.0,
        out.len()
    );
}

#[test]
#[ignore = "prints timings; run explicitly, ideally --release"]
fn print_render_times() {
    let jpeg = RenderParams::from_query(&[], ImageFormat::Jpeg).unwrap();
    let png = RenderParams::from_query(&[], ImageFormat::Png).unwrap();
    let ct = single(Kind::Ct, ts::EXPLICIT_VR_LE, 1);
    time("CT 512x512 16-bit JPEG", &ct.bytes, &jpeg);
    time("CT 512x512 16-bit PNG", &ct.bytes, &png);
    let ct_rle = single(Kind::Ct, ts::RLE_LOSSLESS, 1);
    time("CT 512x512 RLE JPEG", &ct_rle.bytes, &jpeg);
    let spec = DatasetSpec {
        patients: 1,
        studies_per_patient: 1,
        ct_slices: 0,
        mr_slices: 0,
        include_us: false,
        include_reports: false,
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        ..DatasetSpec::default()
    };
    let cr = spec.iter().find(|f| f.kind == Kind::Cr).unwrap();
    time("CR 2048x2500 JPEG", &cr.bytes, &jpeg);
    let pairs = vec![("viewport".to_string(), "512,512".to_string())];
    time(
        "CR 2048x2500 JPEG viewport 512",
        &cr.bytes,
        &RenderParams::from_query(&pairs, ImageFormat::Jpeg).unwrap(),
    );
    let t = Instant::now();
    thumbnail(&cr.bytes, 128, ImageFormat::Jpeg).unwrap();
    println!(
        "CR thumbnail 128: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let us = single(Kind::Us, ts::JPEG_BASELINE, 1);
    time("US 640x480 JPEG baseline frame", &us.bytes, &jpeg);
}

/// Writes renderings for a person to look at into `$PACS_RENDER_DUMP`.
#[test]
#[ignore = "writes images for inspection; run explicitly"]
fn dump_renders() {
    let Some(dir) = std::env::var_os("PACS_RENDER_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let png = RenderParams::from_query(&[], ImageFormat::Png).unwrap();
    for (name, kind, syntax) in [
        ("ct", Kind::Ct, ts::EXPLICIT_VR_BE),
        ("mr", Kind::Mr, ts::RLE_LOSSLESS),
        ("cr", Kind::Cr, ts::DEFLATED_EXPLICIT_VR_LE),
        ("us_jpeg", Kind::Us, ts::JPEG_BASELINE),
        ("us_rle", Kind::Us, ts::RLE_LOSSLESS),
    ] {
        let f = single(kind, syntax, 1);
        std::fs::write(
            dir.join(format!("{name}.png")),
            render(&f.bytes, &png).unwrap(),
        )
        .unwrap();
    }
    if let Some(samples) = std::env::var_os("PACS_PYDICOM_FILES") {
        let samples = std::path::PathBuf::from(samples);
        for name in [
            "examples_palette.dcm",
            "SC_ybr_full_422_uncompressed.dcm",
            "examples_ybr_color.dcm",
            "liver_1frame.dcm",
            "CT_small.dcm",
            "SC_rgb_rle_32bit_2frame.dcm",
        ] {
            let bytes = std::fs::read(samples.join(name)).unwrap();
            std::fs::write(
                dir.join(format!("{name}.png")),
                render(&bytes, &png).unwrap(),
            )
            .unwrap();
        }
    }
}
