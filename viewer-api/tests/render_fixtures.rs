//! Rendering of generated fixtures (pacs-fixtures) and small synthetic
//! instances.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use image::{DynamicImage, GenericImageView};
use pacs_fixtures::{Kind, single, ts};
use pacs_viewer_api::ApiError;
use pacs_viewer_api::render::{ImageFormat, RenderParams, VoiFunction, Window, render, thumbnail};

fn params(format: ImageFormat) -> RenderParams {
    RenderParams::from_query(&[], format).unwrap()
}

fn query(pairs: &[(&str, &str)], format: ImageFormat) -> RenderParams {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    RenderParams::from_query(&pairs, format).unwrap()
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("output decodes as an image")
}

fn is_png(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// A one-frame Explicit VR LE instance with the given pixel module.
fn synthetic(
    photometric: &str,
    bits: u16,
    signed: bool,
    (cols, rows): (u16, u16),
    pixels: Vec<u8>,
    extra: impl FnOnce(&mut InMemDicomObject),
) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let s = |obj: &mut InMemDicomObject, tag, vr, v: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    let us = |obj: &mut InMemDicomObject, tag, v: u16| {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    };
    s(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.7",
    );
    s(
        &mut obj,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.2.1.99.1",
    );
    s(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric,
    );
    us(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    us(&mut obj, tags::ROWS, rows);
    us(&mut obj, tags::COLUMNS, cols);
    us(&mut obj, tags::BITS_ALLOCATED, bits);
    us(&mut obj, tags::BITS_STORED, bits);
    us(&mut obj, tags::HIGH_BIT, bits - 1);
    us(&mut obj, tags::PIXEL_REPRESENTATION, u16::from(signed));
    extra(&mut obj);
    let vr = if bits > 8 { VR::OW } else { VR::OB };
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(pixels.into()),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
        .media_storage_sop_instance_uid("1.2.826.0.1.3680043.2.1.99.1")
        .transfer_syntax(ts::EXPLICIT_VR_LE)
        .build()
        .unwrap();
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).unwrap();
    obj.write_dataset_with_ts(
        &mut out,
        TransferSyntaxRegistry.get(ts::EXPLICIT_VR_LE).unwrap(),
    )
    .unwrap();
    out
}

/// 4x4 8-bit image: 0 everywhere but a bright 255 at (1, 2).
fn bright_dot(photometric: &str) -> Vec<u8> {
    let mut px = vec![0u8; 16];
    px[2 * 4 + 1] = 255;
    synthetic(photometric, 8, false, (4, 4), px, |_| {})
}

#[test]
fn ct_renders_jpeg_and_png_of_the_right_size() {
    let ct = single(Kind::Ct, ts::EXPLICIT_VR_LE, 7);
    let jpeg = render(&ct.bytes, &params(ImageFormat::Jpeg)).unwrap();
    assert!(is_jpeg(&jpeg), "JPEG magic");
    assert!(!is_png(&jpeg));
    assert_eq!(decode(&jpeg).dimensions(), (512, 512));
    let png = render(&ct.bytes, &params(ImageFormat::Png)).unwrap();
    assert!(is_png(&png), "PNG magic");
    let img = decode(&png);
    assert_eq!(img.dimensions(), (512, 512));
    assert_eq!(img.color(), image::ColorType::L8);
    // Not a blank image: a windowed CT has dark air and bright tissue.
    let l = img.to_luma8();
    let (min, max) = l
        .pixels()
        .fold((255u8, 0u8), |(a, b), p| (a.min(p[0]), b.max(p[0])));
    assert!(min < 20 && max > 200, "contrast {min}..{max}");
}

#[test]
fn every_lossless_syntax_renders_the_same_pixels() {
    for kind in [Kind::Ct, Kind::Mr, Kind::Cr] {
        let reference = decode(
            &render(
                &single(kind, ts::EXPLICIT_VR_LE, 3).bytes,
                &params(ImageFormat::Png),
            )
            .unwrap(),
        )
        .to_luma8();
        for syntax in [
            ts::IMPLICIT_VR_LE,
            ts::EXPLICIT_VR_BE,
            ts::DEFLATED_EXPLICIT_VR_LE,
            ts::RLE_LOSSLESS,
        ] {
            let f = single(kind, syntax, 3);
            assert_eq!(f.transfer_syntax, syntax);
            let img = decode(&render(&f.bytes, &params(ImageFormat::Png)).unwrap()).to_luma8();
            assert!(img == reference, "{kind} {syntax} differs from explicit LE");
        }
    }
}

#[test]
fn jpeg_baseline_secondary_capture_renders() {
    let f = single(Kind::Ct, ts::JPEG_BASELINE, 3);
    let img = decode(&render(&f.bytes, &params(ImageFormat::Png)).unwrap());
    assert_eq!(img.dimensions(), (512, 512));
}

#[test]
fn window_changes_the_output() {
    let ct = single(Kind::Ct, ts::EXPLICIT_VR_LE, 7);
    let soft = render(
        &ct.bytes,
        &query(&[("window", "40,400,linear")], ImageFormat::Png),
    )
    .unwrap();
    let lung = render(
        &ct.bytes,
        &query(&[("window", "-600,1500,linear")], ImageFormat::Png),
    )
    .unwrap();
    let sig = render(
        &ct.bytes,
        &query(&[("window", "-600,1500,sigmoid")], ImageFormat::Png),
    )
    .unwrap();
    let (soft, lung, sig) = (
        decode(&soft).to_luma8(),
        decode(&lung).to_luma8(),
        decode(&sig).to_luma8(),
    );
    assert!(soft != lung);
    assert!(lung != sig);
    // A lung window shows lung (about -850 HU) brighter than a soft tissue
    // window, which clips it to black: the mean must rise.
    let mean = |i: &image::GrayImage| i.pixels().map(|p| u64::from(p[0])).sum::<u64>() / 512 / 512;
    assert!(
        mean(&lung) > mean(&soft),
        "{} vs {}",
        mean(&lung),
        mean(&soft)
    );
}

#[test]
fn explicit_window_on_synthetic_values() {
    // 16-bit signed, rescale intercept -1024: stored 1064 is 40 HU.
    let values: [i16; 4] = [0, 1064, 2000, -100];
    let px: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f = synthetic("MONOCHROME2", 16, true, (4, 1), px, |o| {
        o.put(DataElement::new(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            PrimitiveValue::from("-1024"),
        ));
        o.put(DataElement::new(
            tags::RESCALE_SLOPE,
            VR::DS,
            PrimitiveValue::from("1"),
        ));
    });
    let mut p = params(ImageFormat::Png);
    p.window = Some(Window {
        center: 40.0,
        width: 400.0,
        function: VoiFunction::LinearExact,
    });
    let img = decode(&render(&f, &p).unwrap()).to_luma8();
    let v: Vec<u8> = img.pixels().map(|p| p[0]).collect();
    assert_eq!(v, vec![0, 128, 255, 0]);
    // Without a window: min/max of the frame.
    let img = decode(&render(&f, &params(ImageFormat::Png)).unwrap()).to_luma8();
    let v: Vec<u8> = img.pixels().map(|p| p[0]).collect();
    assert_eq!(v[3], 0);
    assert_eq!(v[2], 255);
}

#[test]
fn monochrome1_is_inverted() {
    let m2 =
        decode(&render(&bright_dot("MONOCHROME2"), &params(ImageFormat::Png)).unwrap()).to_luma8();
    let m1 =
        decode(&render(&bright_dot("MONOCHROME1"), &params(ImageFormat::Png)).unwrap()).to_luma8();
    assert_eq!(m2.get_pixel(1, 2)[0], 255);
    assert_eq!(m2.get_pixel(0, 0)[0], 0);
    assert_eq!(m1.get_pixel(1, 2)[0], 0, "bright pixel renders dark");
    assert_eq!(m1.get_pixel(0, 0)[0], 255);
}

#[test]
fn viewport_fits_and_keeps_aspect() {
    let cr = single(Kind::Cr, ts::EXPLICIT_VR_LE, 1); // 512x512
    let img = decode(
        &render(
            &cr.bytes,
            &query(&[("viewport", "100,50")], ImageFormat::Jpeg),
        )
        .unwrap(),
    );
    assert_eq!(img.dimensions(), (50, 50));
    let us = single(Kind::Us, ts::EXPLICIT_VR_LE, 1); // 640x480
    let img = decode(
        &render(
            &us.bytes,
            &query(&[("viewport", "320,320")], ImageFormat::Png),
        )
        .unwrap(),
    );
    assert_eq!(img.dimensions(), (320, 240));
    // Enlarging to fit is allowed, never beyond the viewport.
    let img = decode(
        &render(
            &us.bytes,
            &query(&[("viewport", "1280,2000")], ImageFormat::Png),
        )
        .unwrap(),
    );
    assert_eq!(img.dimensions(), (1280, 960));
    // 6-value form: crop 256x128 from (100, 50), fit in 100x100.
    let img = decode(
        &render(
            &cr.bytes,
            &query(&[("viewport", "100,100,100,50,256,128")], ImageFormat::Png),
        )
        .unwrap(),
    );
    assert_eq!(img.dimensions(), (100, 50));
}

#[test]
fn viewport_crop_takes_the_region() {
    // The crop of the bright dot's row/column keeps the dot; a negative
    // width flips it.
    let f = bright_dot("MONOCHROME2");
    let img =
        decode(&render(&f, &query(&[("viewport", "2,2,1,2,2,2")], ImageFormat::Png)).unwrap())
            .to_luma8();
    assert_eq!(img.dimensions(), (2, 2));
    assert_eq!(img.get_pixel(0, 0)[0], 255);
    assert_eq!(img.get_pixel(1, 0)[0], 0);
    let img = decode(
        &render(
            &f,
            &query(&[("viewport", "2,2,1,2,-2,2")], ImageFormat::Png),
        )
        .unwrap(),
    )
    .to_luma8();
    assert_eq!(img.get_pixel(1, 0)[0], 255, "flipped horizontally");
    let err = render(&f, &query(&[("viewport", "2,2,9,0,,")], ImageFormat::Png)).unwrap_err();
    assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
}

#[test]
fn colour_multiframe_in_every_syntax() {
    let native = single(Kind::Us, ts::EXPLICIT_VR_LE, 5);
    let frame = |bytes: &[u8], n: u32| {
        let mut p = params(ImageFormat::Png);
        p.frame = n;
        decode(&render(bytes, &p).unwrap()).to_rgb8()
    };
    let f1 = frame(&native.bytes, 1);
    let f2 = frame(&native.bytes, 2);
    assert_eq!(f1.dimensions(), (640, 480));
    assert!(f1 != f2, "frames differ");
    // Lossless syntaxes (RLE has planar configuration 1) give the same.
    for syntax in [ts::RLE_LOSSLESS, ts::EXPLICIT_VR_BE, ts::IMPLICIT_VR_LE] {
        let f = single(Kind::Us, syntax, 5);
        assert!(frame(&f.bytes, 2) == f2, "{syntax} frame 2");
    }
    // JPEG Baseline YBR_FULL_422 comes out RGB and close to the original.
    let jpeg = single(Kind::Us, ts::JPEG_BASELINE, 5);
    let j2 = frame(&jpeg.bytes, 2);
    let diff: u64 = j2
        .as_raw()
        .iter()
        .zip(f2.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / f2.as_raw().len() as f64;
    assert!(mean < 6.0, "mean abs difference {mean}");
}

#[test]
fn frame_out_of_range_is_not_found() {
    let us = single(Kind::Us, ts::EXPLICIT_VR_LE, 5);
    for n in [0, 3, 100] {
        let mut p = params(ImageFormat::Jpeg);
        p.frame = n;
        let err = render(&us.bytes, &p).unwrap_err();
        assert!(matches!(err, ApiError::NotFound(_)), "frame {n}: {err:?}");
    }
}

#[test]
fn non_image_instances_cannot_render() {
    for kind in [Kind::Sr, Kind::Pdf] {
        let f = single(kind, ts::EXPLICIT_VR_LE, 1);
        let err = render(&f.bytes, &params(ImageFormat::Jpeg)).unwrap_err();
        assert!(
            matches!(&err, ApiError::CannotRender(m) if m.contains("no pixel data")),
            "{kind}: {err:?}"
        );
        assert!(matches!(
            thumbnail(&f.bytes, 64, ImageFormat::Jpeg),
            Err(ApiError::CannotRender(_))
        ));
    }
}

#[test]
fn thumbnails_fit_and_never_enlarge() {
    let cr = single(Kind::Cr, ts::RLE_LOSSLESS, 1);
    let t = thumbnail(&cr.bytes, 128, ImageFormat::Jpeg).unwrap();
    assert!(is_jpeg(&t));
    assert_eq!(decode(&t).dimensions(), (128, 128));
    let us = single(Kind::Us, ts::JPEG_BASELINE, 1);
    let t = thumbnail(&us.bytes, 128, ImageFormat::Png).unwrap();
    assert!(is_png(&t));
    assert_eq!(decode(&t).dimensions(), (128, 96));
    let mr = single(Kind::Mr, ts::EXPLICIT_VR_BE, 1);
    assert_eq!(
        decode(&thumbnail(&mr.bytes, 512, ImageFormat::Png).unwrap()).dimensions(),
        (256, 256)
    );
}

#[test]
fn quality_changes_jpeg_size() {
    let ct = single(Kind::Ct, ts::EXPLICIT_VR_LE, 7);
    let low = render(&ct.bytes, &query(&[("quality", "10")], ImageFormat::Jpeg)).unwrap();
    let high = render(&ct.bytes, &query(&[("quality", "95")], ImageFormat::Jpeg)).unwrap();
    assert!(low.len() < high.len(), "{} vs {}", low.len(), high.len());
}

#[test]
fn full_size_radiograph_downscales() {
    // A 2048x2500 CR (the realistic size) into a 256x256 viewport.
    let spec = pacs_fixtures::DatasetSpec {
        patients: 1,
        studies_per_patient: 1,
        ct_slices: 0,
        mr_slices: 0,
        include_us: false,
        include_reports: false,
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        ..pacs_fixtures::DatasetSpec::default()
    };
    let cr = spec.iter().find(|f| f.kind == Kind::Cr).unwrap();
    let img = decode(
        &render(
            &cr.bytes,
            &query(&[("viewport", "256,256")], ImageFormat::Jpeg),
        )
        .unwrap(),
    );
    assert_eq!(img.dimensions(), (210, 256));
}

#[test]
fn enhanced_functional_groups_give_rescale_and_window() {
    use dicom_core::Length;
    use dicom_core::value::DataSetSequence;
    let item = |pairs: &[(dicom_core::Tag, &str)]| {
        let mut o = InMemDicomObject::new_empty();
        for (tag, v) in pairs {
            o.put(DataElement::new(*tag, VR::DS, PrimitiveValue::from(*v)));
        }
        o
    };
    let group = |seq, inner: InMemDicomObject| {
        let mut g = InMemDicomObject::new_empty();
        g.put(DataElement::new(
            seq,
            VR::SQ,
            DataSetSequence::new(vec![inner], Length::UNDEFINED),
        ));
        g
    };
    let values: [u16; 4] = [999, 1000, 1001, 1002];
    let px: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f = synthetic("MONOCHROME2", 16, false, (4, 1), px, |o| {
        // Per frame: rescale to -1, 0, 1, 2; shared: window 0/2 exact.
        let per_frame = group(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            item(&[
                (tags::RESCALE_INTERCEPT, "-1000"),
                (tags::RESCALE_SLOPE, "1"),
            ]),
        );
        let mut voi = item(&[(tags::WINDOW_CENTER, "0"), (tags::WINDOW_WIDTH, "2")]);
        voi.put(DataElement::new(
            tags::VOILUT_FUNCTION,
            VR::CS,
            PrimitiveValue::from("LINEAR_EXACT"),
        ));
        let shared = group(tags::FRAME_VOILUT_SEQUENCE, voi);
        for (tag, g) in [
            (tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
            (tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, shared),
        ] {
            o.put(DataElement::new(
                tag,
                VR::SQ,
                DataSetSequence::new(vec![g], Length::UNDEFINED),
            ));
        }
    });
    let img = decode(&render(&f, &params(ImageFormat::Png)).unwrap()).to_luma8();
    let v: Vec<u8> = img.pixels().map(|p| p[0]).collect();
    assert_eq!(v, vec![0, 128, 255, 255]);
}

#[test]
fn colour_jpeg_frame_two_of_one_fragment_renders() {
    use dicom_core::value::{PixelFragmentSequence, Value};
    let us = single(Kind::Us, ts::JPEG_BASELINE, 4);
    let mut obj = dicom_object::OpenFileOptions::new()
        .from_reader(&us.bytes[..])
        .unwrap();
    let Value::PixelSequence(seq) = obj.get(tags::PIXEL_DATA).unwrap().value().clone() else {
        panic!("encapsulated")
    };
    let joined: Vec<u8> = seq.fragments().iter().flatten().copied().collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new_fragments(vec![joined]),
    ));
    let mut one = Vec::new();
    obj.write_all(&mut one).unwrap();
    let mut p = params(ImageFormat::Png);
    p.frame = 2;
    let a = decode(&render(&one, &p).unwrap()).to_rgb8();
    let b = decode(&render(&us.bytes, &p).unwrap()).to_rgb8();
    assert!(a == b);
}
