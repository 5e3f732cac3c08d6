//! Rendered images and thumbnails (JPEG or PNG) from stored instances.
//!
//! [`render`] decodes one frame (dicom-pixeldata for compressed syntaxes,
//! the stored bytes directly for native ones), applies the Modality LUT
//! (Rescale Slope/Intercept) and a VOI window through a lookup table over
//! every possible stored value (256 or 65536 entries, so the per-pixel work
//! is one table read), inverts MONOCHROME1, converts YBR_FULL/YBR_FULL_422
//! to RGB, crops and scales for the viewport and encodes JPEG or PNG.
//!
//! The window is the one asked for, else the first Window Center/Width of
//! the data set (with its VOI LUT Function), else the frame's min/max.
//! Colour images are not windowed. Never burned in: annotations.

use std::borrow::Cow;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use image::imageops::FilterType;
use image::{GrayImage, ImageBuffer, Pixel, RgbImage};

use crate::error::ApiError;
use crate::frames::{self, Instance, PixelInfo, Syntax};

/// Output image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }
}

/// VOI LUT function (PS3.3 C.11.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// A VOI window in modality units (after rescale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

/// Target size: the (cropped) image is scaled to fit inside, keeping its
/// aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
}

/// Source region `sx,sy,sw,sh` of the 6-value viewport form (PS3.18
/// 8.3.5.1.3), in image pixels, cropped before scaling. `None` fields take
/// their defaults: `sx`, `sy` 0, `sw`, `sh` up to the image's edge; a
/// negative `sw` / `sh` flips the region horizontally / vertically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Region {
    pub sx: Option<u32>,
    pub sy: Option<u32>,
    pub sw: Option<i32>,
    pub sh: Option<i32>,
}

/// Parameters of one rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderParams {
    /// 1-based frame number.
    pub frame: u32,
    pub window: Option<Window>,
    pub viewport: Option<Viewport>,
    /// Crop applied before the viewport scaling (6-value viewport form).
    pub region: Option<Region>,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    pub format: ImageFormat,
}

/// Default JPEG quality when none is asked for.
pub const DEFAULT_QUALITY: u8 = 90;
/// Largest viewport side accepted.
pub const MAX_VIEWPORT_SIDE: u32 = 8192;

impl RenderParams {
    /// Frame 1, data set window, no viewport, default quality.
    pub fn new(format: ImageFormat) -> Self {
        RenderParams {
            frame: 1,
            window: None,
            viewport: None,
            region: None,
            quality: DEFAULT_QUALITY,
            format,
        }
    }

    /// Parse the PS3.18 8.3.5.1 rendered-resource query parameters
    /// `window`, `viewport`, `quality` (and accept, ignoring it,
    /// `annotation`; other parameters are ignored). `frame` is 1: the
    /// caller sets it from the path.
    pub fn from_query(pairs: &[(String, String)], format: ImageFormat) -> Result<Self, ApiError> {
        let mut params = RenderParams::new(format);
        let mut seen = [false; 3];
        let mut once = |i: usize, name: &str| {
            if std::mem::replace(&mut seen[i], true) {
                Err(bad(format!(
                    "query parameter '{name}' given more than once"
                )))
            } else {
                Ok(())
            }
        };
        for (key, value) in pairs {
            match key.as_str() {
                "window" => {
                    once(0, "window")?;
                    params.window = Some(parse_window(value)?);
                }
                "viewport" => {
                    once(1, "viewport")?;
                    let (viewport, region) = parse_viewport(value)?;
                    params.viewport = Some(viewport);
                    params.region = region;
                }
                "quality" => {
                    once(2, "quality")?;
                    params.quality = value
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|q| (1..=100).contains(q))
                        .ok_or_else(|| {
                            bad(format!("quality must be an integer 1..100, got '{value}'"))
                        })?;
                }
                // Burned-in annotations are never rendered.
                "annotation" => {}
                _ => {}
            }
        }
        Ok(params)
    }

    fn validate(&self) -> Result<(), ApiError> {
        if !(1..=100).contains(&self.quality) {
            return Err(bad(format!("quality must be 1..100, got {}", self.quality)));
        }
        if let Some(w) = &self.window {
            check_window(w)?;
        }
        if let Some(v) = &self.viewport {
            check_viewport_size(v.width, v.height)?;
        }
        Ok(())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn parse_window(value: &str) -> Result<Window, ApiError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(bad(format!(
            "window must be 'center,width,function', got '{value}'"
        )));
    }
    let num = |s: &str, what: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("window {what} must be a number, got '{s}'")))
    };
    let function = match parts.get(2).map(|s| s.to_ascii_lowercase()) {
        None => VoiFunction::Linear,
        Some(f) => match f.as_str() {
            "linear" | "" => VoiFunction::Linear,
            "linear-exact" | "linear_exact" => VoiFunction::LinearExact,
            "sigmoid" => VoiFunction::Sigmoid,
            _ => {
                return Err(bad(format!(
                    "window function must be linear, linear-exact or sigmoid, got '{}'",
                    parts[2]
                )));
            }
        },
    };
    let w = Window {
        center: num(parts[0], "center")?,
        width: num(parts[1], "width")?,
        function,
    };
    check_window(&w)?;
    Ok(w)
}

fn check_window(w: &Window) -> Result<(), ApiError> {
    if !w.center.is_finite() || !w.width.is_finite() {
        return Err(bad("window center and width must be finite"));
    }
    let ok = match w.function {
        VoiFunction::Linear => w.width >= 1.0,
        VoiFunction::LinearExact | VoiFunction::Sigmoid => w.width > 0.0,
    };
    if !ok {
        return Err(bad(format!(
            "window width {} is too small (linear needs >= 1, others > 0)",
            w.width
        )));
    }
    Ok(())
}

fn parse_viewport(value: &str) -> Result<(Viewport, Option<Region>), ApiError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    if parts.len() != 2 && parts.len() != 6 {
        return Err(bad(format!(
            "viewport must be 'vw,vh' or 'vw,vh,sx,sy,sw,sh', got '{value}'"
        )));
    }
    let side = |s: &str, what: &str| {
        s.parse::<u32>().map_err(|_| {
            bad(format!(
                "viewport {what} must be a positive integer, got '{s}'"
            ))
        })
    };
    let (width, height) = (side(parts[0], "width")?, side(parts[1], "height")?);
    check_viewport_size(width, height)?;
    let region = if parts.len() == 6 {
        let offset = |s: &str, what: &str| -> Result<Option<u32>, ApiError> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<u32>().map(Some).map_err(|_| {
                bad(format!(
                    "viewport {what} must be a non-negative integer, got '{s}'"
                ))
            })
        };
        let extent = |s: &str, what: &str| -> Result<Option<i32>, ApiError> {
            if s.is_empty() {
                return Ok(None);
            }
            match s.parse::<i32>() {
                Ok(0) | Err(_) => Err(bad(format!(
                    "viewport {what} must be a non-zero integer, got '{s}'"
                ))),
                Ok(v) => Ok(Some(v)),
            }
        };
        Some(Region {
            sx: offset(parts[2], "sx")?,
            sy: offset(parts[3], "sy")?,
            sw: extent(parts[4], "sw")?,
            sh: extent(parts[5], "sh")?,
        })
    } else {
        None
    };
    Ok((Viewport { width, height }, region))
}

fn check_viewport_size(width: u32, height: u32) -> Result<(), ApiError> {
    if width == 0 || height == 0 || width > MAX_VIEWPORT_SIDE || height > MAX_VIEWPORT_SIDE {
        return Err(bad(format!(
            "viewport {width}x{height} out of range (1..{MAX_VIEWPORT_SIDE} per side)"
        )));
    }
    Ok(())
}

/// Render one frame of a Part-10 instance as JPEG or PNG.
pub fn render(part10: &[u8], params: &RenderParams) -> Result<Vec<u8>, ApiError> {
    params.validate()?;
    let inst = open(part10)?;
    let index = inst.frame_index(params.frame)?;
    let mut img = frame_image(&inst, index, params.window.as_ref())?;
    if let Some(region) = &params.region {
        img = crop(img, region)?;
    }
    if let Some(v) = &params.viewport {
        let (tw, th) = fit(img.width(), img.height(), v.width, v.height, true);
        img = img.resize(tw, th);
    }
    img.encode(params.format, params.quality)
}

/// The middle frame with the default window, fitted (never enlarged) in
/// `max_side` x `max_side`.
pub fn thumbnail(part10: &[u8], max_side: u32, format: ImageFormat) -> Result<Vec<u8>, ApiError> {
    check_viewport_size(max_side, max_side)?;
    let inst = open(part10)?;
    let index = inst.info.frames as usize / 2;
    let img = frame_image(&inst, index, None)?;
    let (tw, th) = fit(img.width(), img.height(), max_side, max_side, false);
    img.resize(tw, th).encode(format, DEFAULT_QUALITY)
}

fn open(part10: &[u8]) -> Result<Instance, ApiError> {
    Instance::open(part10)?
        .ok_or_else(|| ApiError::CannotRender("instance has no pixel data".into()))
}

/// An 8-bit rendered frame.
enum Rendered {
    Gray(GrayImage),
    Rgb(RgbImage),
}

impl Rendered {
    fn width(&self) -> u32 {
        match self {
            Rendered::Gray(i) => i.width(),
            Rendered::Rgb(i) => i.width(),
        }
    }

    fn height(&self) -> u32 {
        match self {
            Rendered::Gray(i) => i.height(),
            Rendered::Rgb(i) => i.height(),
        }
    }

    fn resize(self, w: u32, h: u32) -> Rendered {
        match self {
            Rendered::Gray(i) => Rendered::Gray(resize(i, w, h)),
            Rendered::Rgb(i) => Rendered::Rgb(resize(i, w, h)),
        }
    }

    fn encode(&self, format: ImageFormat, quality: u8) -> Result<Vec<u8>, ApiError> {
        use image::ExtendedColorType;
        let (buf, w, h, color): (&[u8], u32, u32, ExtendedColorType) = match self {
            Rendered::Gray(i) => (i.as_raw(), i.width(), i.height(), ExtendedColorType::L8),
            Rendered::Rgb(i) => (i.as_raw(), i.width(), i.height(), ExtendedColorType::Rgb8),
        };
        let mut out = Vec::with_capacity(buf.len() / 4 + 1024);
        let result = match format {
            ImageFormat::Jpeg => {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                    .encode(buf, w, h, color)
            }
            ImageFormat::Png => {
                use image::ImageEncoder as _;
                image::codecs::png::PngEncoder::new_with_quality(
                    &mut out,
                    image::codecs::png::CompressionType::Fast,
                    image::codecs::png::FilterType::Adaptive,
                )
                .write_image(buf, w, h, color)
            }
        };
        result.map_err(|e| ApiError::Internal(format!("image encoding failed: {e}")))?;
        Ok(out)
    }
}

/// Size that fits `w` x `h` inside `vw` x `vh` keeping the aspect ratio;
/// with `enlarge` false, never bigger than the image.
fn fit(w: u32, h: u32, vw: u32, vh: u32, enlarge: bool) -> (u32, u32) {
    let mut scale = (f64::from(vw) / f64::from(w)).min(f64::from(vh) / f64::from(h));
    if !enlarge {
        scale = scale.min(1.0);
    }
    let tw = ((f64::from(w) * scale).round() as u32).clamp(1, vw.max(1));
    let th = ((f64::from(h) * scale).round() as u32).clamp(1, vh.max(1));
    (tw, th)
}

/// Resize with a triangle filter, after an integer box reduction for
/// large downscales (the filter's cost then stays proportional to the
/// output).
fn resize<P>(img: ImageBuffer<P, Vec<u8>>, w: u32, h: u32) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    if img.width() == w && img.height() == h {
        return img;
    }
    let k = (img.width() / w).min(img.height() / h);
    let img = if k >= 2 { box_reduce(&img, k) } else { img };
    if img.width() == w && img.height() == h {
        return img;
    }
    image::imageops::resize(&img, w, h, FilterType::Triangle)
}

/// Average `k` x `k` blocks (edges: partial blocks dropped).
fn box_reduce<P>(img: &ImageBuffer<P, Vec<u8>>, k: u32) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let ch = P::CHANNEL_COUNT as usize;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let k = k as usize;
    let (ow, oh) = (w / k, h / k);
    let src = img.as_raw();
    let mut out = vec![0u8; ow * oh * ch];
    let mut acc = vec![0u32; ow * ch];
    let div = (k * k) as u32;
    for oy in 0..oh {
        acc.iter_mut().for_each(|a| *a = 0);
        for y in oy * k..oy * k + k {
            let row = &src[y * w * ch..(y * w + ow * k) * ch];
            for (ox, block) in row.chunks_exact(k * ch).enumerate() {
                let a = &mut acc[ox * ch..ox * ch + ch];
                for px in block.chunks_exact(ch) {
                    for (s, v) in a.iter_mut().zip(px) {
                        *s += u32::from(*v);
                    }
                }
            }
        }
        for (o, a) in out[oy * ow * ch..(oy + 1) * ow * ch].iter_mut().zip(&acc) {
            *o = ((*a + div / 2) / div) as u8;
        }
    }
    ImageBuffer::from_raw(ow as u32, oh as u32, out).expect("buffer of the right size")
}

fn crop(img: Rendered, r: &Region) -> Result<Rendered, ApiError> {
    let (w, h) = (img.width(), img.height());
    let sx = r.sx.unwrap_or(0);
    let sy = r.sy.unwrap_or(0);
    if sx >= w || sy >= h {
        return Err(bad(format!(
            "viewport region origin {sx},{sy} is outside the {w}x{h} image"
        )));
    }
    let extent = |s: Option<i32>, origin: u32, size: u32| -> (u32, bool) {
        match s {
            None => (size - origin, false),
            Some(v) => (v.unsigned_abs().min(size - origin), v < 0),
        }
    };
    let (cw, flip_h) = extent(r.sw, sx, w);
    let (chh, flip_v) = extent(r.sh, sy, h);
    fn apply<P: Pixel<Subpixel = u8> + 'static>(
        i: &ImageBuffer<P, Vec<u8>>,
        (x, y, w, h): (u32, u32, u32, u32),
        flip_h: bool,
        flip_v: bool,
    ) -> ImageBuffer<P, Vec<u8>> {
        let mut out = image::imageops::crop_imm(i, x, y, w, h).to_image();
        if flip_h {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if flip_v {
            image::imageops::flip_vertical_in_place(&mut out);
        }
        out
    }
    let rect = (sx, sy, cw, chh);
    Ok(match &img {
        Rendered::Gray(i) => Rendered::Gray(apply(i, rect, flip_h, flip_v)),
        Rendered::Rgb(i) => Rendered::Rgb(apply(i, rect, flip_h, flip_v)),
    })
}

/// Decode and render frame `index` (0-based) to 8 bits.
fn frame_image(
    inst: &Instance,
    index: usize,
    window: Option<&Window>,
) -> Result<Rendered, ApiError> {
    let info = inst.info.clone();
    // Samples as stored (native) or as decoded (encapsulated), and the
    // photometric interpretation and planar configuration they are in.
    let (raw, photometric, planar): (Cow<'_, [u8]>, String, u32) = if inst.is_encapsulated() {
        let ts = info.ts.clone();
        let media = match frames::classify(&ts) {
            Syntax::Encapsulated(m) => m,
            Syntax::Video(_) => {
                return Err(ApiError::CannotRender(format!(
                    "video transfer syntax {ts} cannot be rendered"
                )));
            }
            Syntax::Native => "",
        };
        if !frames::can_decode(&ts) {
            return Err(ApiError::CannotRender(format!(
                "transfer syntax {ts} cannot be decoded by this build"
            )));
        }
        let spans = inst.frame_spans()?;
        let data = inst.decode_span(&spans[index], index)?;
        // The JPEG decoder converts colour to RGB; other codecs return the
        // stored colour space, interleaved.
        let pi = if info.samples == 3 && media == "image/jpeg" {
            "RGB".to_string()
        } else {
            info.photometric.clone()
        };
        (Cow::Owned(data), pi, 0)
    } else {
        (
            inst.native_frame(index)?,
            info.photometric.clone(),
            info.planar,
        )
    };
    let (w, h) = (info.cols, info.rows);
    match (info.samples, photometric.as_str()) {
        (1, "MONOCHROME1" | "MONOCHROME2") => {
            let invert = photometric == "MONOCHROME1";
            let voi = Voi::from_instance(inst, index, window);
            let px = gray_pixels(&raw, &info, &voi, invert)?;
            Ok(Rendered::Gray(
                GrayImage::from_raw(w, h, px).ok_or_else(|| internal_size(&info))?,
            ))
        }
        (1, "PALETTE COLOR") => {
            let px = palette_pixels(inst, &raw, &info)?;
            Ok(Rendered::Rgb(
                RgbImage::from_raw(w, h, px).ok_or_else(|| internal_size(&info))?,
            ))
        }
        (3, "RGB" | "YBR_FULL" | "YBR_FULL_422") => {
            let native_422 = photometric == "YBR_FULL_422" && !inst.is_encapsulated();
            let px = color_pixels(&raw, &info, planar, &photometric, native_422)?;
            Ok(Rendered::Rgb(
                RgbImage::from_raw(w, h, px).ok_or_else(|| internal_size(&info))?,
            ))
        }
        (s, pi) => Err(ApiError::CannotRender(format!(
            "photometric interpretation {pi} with {s} samples per pixel is not supported"
        ))),
    }
}

fn internal_size(info: &PixelInfo) -> ApiError {
    ApiError::Internal(format!(
        "rendered buffer does not match {}x{}",
        info.cols, info.rows
    ))
}

/// Modality and VOI transformation of a grey frame.
struct Voi {
    slope: f64,
    intercept: f64,
    /// `None`: the frame's min/max.
    window: Option<Window>,
}

impl Voi {
    /// Rescale and window of frame `index`: the data set's top-level
    /// attributes, else those of the frame's functional groups (enhanced
    /// multi-frame objects).
    fn from_instance(inst: &Instance, index: usize, asked: Option<&Window>) -> Voi {
        let obj: &InMemDicomObject = &inst.obj;
        let rescale =
            frames::functional_group(obj, index, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);
        let voi = frames::functional_group(obj, index, tags::FRAME_VOILUT_SEQUENCE);
        let first = |tag, group: Option<&InMemDicomObject>| -> Option<f64> {
            frames::floats(obj, tag)
                .first()
                .copied()
                .or_else(|| frames::floats(group?, tag).first().copied())
                .filter(|v| v.is_finite())
        };
        let slope = first(tags::RESCALE_SLOPE, rescale)
            .filter(|s| *s != 0.0)
            .unwrap_or(1.0);
        let intercept = first(tags::RESCALE_INTERCEPT, rescale).unwrap_or(0.0);
        let window = asked.copied().or_else(|| {
            let center = first(tags::WINDOW_CENTER, voi)?;
            let width = first(tags::WINDOW_WIDTH, voi)?;
            let function = frames::string(obj, tags::VOILUT_FUNCTION)
                .or_else(|| frames::string(voi?, tags::VOILUT_FUNCTION));
            let function = match function.as_deref() {
                Some("LINEAR_EXACT") => VoiFunction::LinearExact,
                Some("SIGMOID") => VoiFunction::Sigmoid,
                _ => VoiFunction::Linear,
            };
            let w = Window {
                center,
                width,
                function,
            };
            check_window(&w).ok().map(|_| w)
        });
        Voi {
            slope,
            intercept,
            window,
        }
    }
}

/// Output (0..=1) of a VOI window for modality value `x` (PS3.3
/// C.11.2.1.2.1 and C.11.2.1.3).
fn apply_window(w: &Window, x: f64) -> f64 {
    let (c, wd) = (w.center, w.width);
    match w.function {
        VoiFunction::Linear => {
            if x <= c - 0.5 - (wd - 1.0) / 2.0 {
                0.0
            } else if x > c - 0.5 + (wd - 1.0) / 2.0 || wd <= 1.0 {
                1.0
            } else {
                ((x - (c - 0.5)) / (wd - 1.0) + 0.5).clamp(0.0, 1.0)
            }
        }
        VoiFunction::LinearExact => {
            if x <= c - wd / 2.0 {
                0.0
            } else if x > c + wd / 2.0 {
                1.0
            } else {
                ((x - c) / wd + 0.5).clamp(0.0, 1.0)
            }
        }
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / wd).exp()),
    }
}

fn to_u8(y: f64, invert: bool) -> u8 {
    let v = (y * 255.0).round().clamp(0.0, 255.0) as u8;
    if invert { 255 - v } else { v }
}

/// Stored value of a raw sample word (mask to Bits Stored below High Bit,
/// sign-extend for signed data).
#[inline]
fn stored_value(word: u64, info: &PixelInfo) -> i64 {
    let shift = info.high_bit + 1 - info.bits_stored;
    let bits = info.bits_stored;
    let v = if bits >= 64 {
        word
    } else {
        (word >> shift) & ((1u64 << bits) - 1)
    };
    if info.signed && bits < 64 && v & (1u64 << (bits - 1)) != 0 {
        v as i64 - (1i64 << bits)
    } else {
        v as i64
    }
}

/// Grey frame through Modality LUT and VOI to 8 bits.
fn gray_pixels(raw: &[u8], info: &PixelInfo, voi: &Voi, invert: bool) -> Result<Vec<u8>, ApiError> {
    let n = info.pixels();
    let need = if info.bits_allocated == 1 {
        n.div_ceil(8)
    } else {
        n * info.sample_bytes()
    };
    if raw.len() < need {
        return Err(ApiError::CannotRender(format!(
            "frame data is {} bytes, expected {need}",
            raw.len()
        )));
    }
    let modality = |v: i64| v as f64 * voi.slope + voi.intercept;
    // Window: asked / data set / min..max of the frame.
    let window_for = |min: i64, max: i64| -> Window {
        voi.window.unwrap_or_else(|| {
            let (a, b) = (modality(min), modality(max));
            let (lo, hi) = (a.min(b), a.max(b));
            Window {
                center: (lo + hi) / 2.0,
                width: (hi - lo).max(1.0),
                function: VoiFunction::LinearExact,
            }
        })
    };
    let lut_for = |bits: u32, w: &Window| -> Vec<u8> {
        (0..1u64 << bits)
            .map(|word| to_u8(apply_window(w, modality(stored_value(word, info))), invert))
            .collect()
    };
    match info.bits_allocated {
        1 => {
            let bit = |i: usize| i64::from((raw[i / 8] >> (i % 8)) & 1);
            let w = window_for(0, 1);
            let lut = [
                to_u8(apply_window(&w, modality(0)), invert),
                to_u8(apply_window(&w, modality(1)), invert),
            ];
            Ok((0..n).map(|i| lut[bit(i) as usize]).collect())
        }
        8 => {
            let raw = &raw[..n];
            let (min, max) = if voi.window.is_none() {
                min_max(raw.iter().map(|&b| stored_value(u64::from(b), info)))
            } else {
                (0, 0)
            };
            let lut = lut_for(8, &window_for(min, max));
            Ok(raw.iter().map(|&b| lut[usize::from(b)]).collect())
        }
        16 => {
            let words = raw[..n * 2]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            let (min, max) = if voi.window.is_none() {
                min_max(words.clone().map(|w| stored_value(u64::from(w), info)))
            } else {
                (0, 0)
            };
            let lut = lut_for(16, &window_for(min, max));
            Ok(words.map(|w| lut[usize::from(w)]).collect())
        }
        32 => {
            let values: Vec<i64> = raw[..n * 4]
                .chunks_exact(4)
                .map(|c| {
                    stored_value(
                        u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        info,
                    )
                })
                .collect();
            let (min, max) = if voi.window.is_none() {
                min_max(values.iter().copied())
            } else {
                (0, 0)
            };
            let w = window_for(min, max);
            Ok(values
                .iter()
                .map(|&v| to_u8(apply_window(&w, modality(v)), invert))
                .collect())
        }
        b => Err(ApiError::CannotRender(format!(
            "grey images with BitsAllocated {b} are not supported"
        ))),
    }
}

fn min_max(values: impl Iterator<Item = i64>) -> (i64, i64) {
    values.fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Colour frame (RGB, YBR_FULL, native YBR_FULL_422) to interleaved RGB8.
fn color_pixels(
    raw: &[u8],
    info: &PixelInfo,
    planar: u32,
    photometric: &str,
    native_422: bool,
) -> Result<Vec<u8>, ApiError> {
    let n = info.pixels();
    let sb = info.sample_bytes();
    if !matches!(sb, 1 | 2 | 4) {
        return Err(ApiError::CannotRender(format!(
            "colour images with BitsAllocated {} are not supported",
            info.bits_allocated
        )));
    }
    let samples_needed = if native_422 { n * 2 } else { n * 3 };
    if raw.len() < samples_needed * sb {
        return Err(ApiError::CannotRender(format!(
            "frame data is {} bytes, expected {}",
            raw.len(),
            samples_needed * sb
        )));
    }
    // Samples to 8 bits.
    let shift = info.bits_stored.saturating_sub(8);
    let eight: Cow<'_, [u8]> = if sb == 1 {
        Cow::Borrowed(&raw[..samples_needed])
    } else {
        Cow::Owned(
            raw[..samples_needed * sb]
                .chunks_exact(sb)
                .map(|c| {
                    let word = c
                        .iter()
                        .rev()
                        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                    (stored_value(word, info).max(0) >> shift).min(255) as u8
                })
                .collect(),
        )
    };
    let mut out = vec![0u8; n * 3];
    if native_422 {
        // Y1 Y2 Cb Cr for each pair of pixels of a row.
        let cols = info.cols as usize;
        let mut src = eight.chunks_exact(4);
        for row in out.chunks_exact_mut(cols * 3) {
            for pair in row.chunks_mut(6) {
                let Some(q) = src.next() else { break };
                let (cb, cr) = (q[2], q[3]);
                pair[..3].copy_from_slice(&ybr_to_rgb(q[0], cb, cr));
                if pair.len() == 6 {
                    pair[3..].copy_from_slice(&ybr_to_rgb(q[1], cb, cr));
                }
            }
        }
        return Ok(out);
    }
    if planar == 1 {
        let (r, rest) = eight.split_at(n);
        let (g, b) = rest.split_at(n);
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = r[i];
            px[1] = g[i];
            px[2] = b[i];
        }
    } else {
        out.copy_from_slice(&eight[..n * 3]);
    }
    if photometric.starts_with("YBR_FULL") {
        for px in out.chunks_exact_mut(3) {
            px.copy_from_slice(&ybr_to_rgb(px[0], px[1], px[2]));
        }
    }
    Ok(out)
}

/// YBR_FULL (ITU-R BT.601 full range) to RGB, fixed point.
#[inline]
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = i32::from(y) << 16;
    let cb = i32::from(cb) - 128;
    let cr = i32::from(cr) - 128;
    let r = y + 91_881 * cr;
    let g = y - 22_554 * cb - 46_802 * cr;
    let b = y + 116_130 * cb;
    let c = |v: i32| ((v + (1 << 15)) >> 16).clamp(0, 255) as u8;
    [c(r), c(g), c(b)]
}

/// PALETTE COLOR through the Red/Green/Blue Palette Color LUTs.
fn palette_pixels(inst: &Instance, raw: &[u8], info: &PixelInfo) -> Result<Vec<u8>, ApiError> {
    let obj = &inst.obj;
    let lut = |desc, data| -> Result<(Vec<u8>, i64), ApiError> {
        let d: Vec<i64> = obj
            .get(desc)
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .filter(|d| d.len() == 3)
            .ok_or_else(|| ApiError::CannotRender("palette LUT descriptor missing".into()))?;
        let entries = if d[0] == 0 { 65536 } else { d[0] as usize };
        let first = if d[1] < 0 { d[1] + 65536 } else { d[1] };
        let bytes = obj
            .get(data)
            .and_then(|e| e.value().to_bytes().ok().map(Cow::into_owned))
            .ok_or_else(|| {
                ApiError::CannotRender(
                    "palette LUT data missing (segmented palettes are not supported)".into(),
                )
            })?;
        let table: Vec<u8> = if d[2] == 8 && bytes.len() >= entries {
            bytes[..entries].to_vec()
        } else if bytes.len() >= entries * 2 {
            bytes[..entries * 2]
                .chunks_exact(2)
                .map(|c| (u16::from_le_bytes([c[0], c[1]]) >> 8) as u8)
                .collect()
        } else {
            return Err(ApiError::CannotRender("palette LUT data too short".into()));
        };
        Ok((table, first))
    };
    let (r, first) = lut(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let (g, _) = lut(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let (b, _) = lut(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let n = info.pixels();
    let sb = info.sample_bytes();
    if !matches!(sb, 1 | 2) || raw.len() < n * sb {
        return Err(ApiError::CannotRender(
            "palette frame data is too short".into(),
        ));
    }
    let last = r.len().min(g.len()).min(b.len()) as i64 - 1;
    let mut out = Vec::with_capacity(n * 3);
    for i in 0..n {
        let word = if sb == 1 {
            u64::from(raw[i])
        } else {
            u64::from(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]))
        };
        let k = (stored_value(word, info) - first).clamp(0, last) as usize;
        out.extend_from_slice(&[r[k], g[k], b[k]]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_query() {
        let p = RenderParams::from_query(
            &q(&[
                ("window", "40,400,linear-exact"),
                ("viewport", "256,128"),
                ("quality", "75"),
                ("annotation", "patient,technique"),
                ("charset", "utf-8"),
            ]),
            ImageFormat::Jpeg,
        )
        .unwrap();
        assert_eq!(
            p.window,
            Some(Window {
                center: 40.0,
                width: 400.0,
                function: VoiFunction::LinearExact
            })
        );
        assert_eq!(p.viewport.unwrap().width, 256);
        assert_eq!(p.region, None);
        assert_eq!(p.quality, 75);
        assert_eq!(p.frame, 1);

        let p =
            RenderParams::from_query(&q(&[("viewport", "64,64,10,20,-100,")]), ImageFormat::Png)
                .unwrap();
        assert_eq!(
            p.region,
            Some(Region {
                sx: Some(10),
                sy: Some(20),
                sw: Some(-100),
                sh: None
            })
        );
        let p = RenderParams::from_query(&q(&[]), ImageFormat::Png).unwrap();
        assert_eq!(p.quality, DEFAULT_QUALITY);
        assert_eq!(p.window, None);
    }

    #[test]
    fn rejects_malformed_query() {
        for (k, v) in [
            ("window", "40"),
            ("window", "40,abc,linear"),
            ("window", "40,400,cubic"),
            ("window", "40,0,linear"),
            ("window", "40,0.5"),
            ("window", "nan,400"),
            ("viewport", "256"),
            ("viewport", "0,10"),
            ("viewport", "-5,10"),
            ("viewport", "10,10,1,2,3"),
            ("viewport", "10,10,1,2,0,4"),
            ("viewport", "99999,10"),
            ("quality", "0"),
            ("quality", "101"),
            ("quality", "high"),
        ] {
            let err = RenderParams::from_query(&q(&[(k, v)]), ImageFormat::Jpeg).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{k}={v}: {err:?}");
        }
        let err =
            RenderParams::from_query(&q(&[("quality", "5"), ("quality", "6")]), ImageFormat::Jpeg)
                .unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)));
    }

    #[test]
    fn windows_follow_ps3_3() {
        let lin = Window {
            center: 40.0,
            width: 400.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(apply_window(&lin, -200.0), 0.0);
        assert_eq!(apply_window(&lin, 300.0), 1.0);
        assert!((apply_window(&lin, 39.5) - 0.5).abs() < 1e-9);
        let ex = Window {
            function: VoiFunction::LinearExact,
            ..lin
        };
        assert!((apply_window(&ex, 40.0) - 0.5).abs() < 1e-9);
        let sig = Window {
            function: VoiFunction::Sigmoid,
            ..lin
        };
        assert!((apply_window(&sig, 40.0) - 0.5).abs() < 1e-9);
        assert!(apply_window(&sig, 1000.0) > 0.99);
    }

    #[test]
    fn stored_values_mask_and_sign() {
        let mut info = PixelInfo {
            rows: 1,
            cols: 1,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 11,
            signed: true,
            planar: 0,
            photometric: "MONOCHROME2".into(),
            frames: 1,
            ts: String::new(),
        };
        assert_eq!(stored_value(0x0FFF, &info), -1);
        assert_eq!(stored_value(0xF7FF, &info), 2047);
        assert_eq!(stored_value(0x0800, &info), -2048);
        info.signed = false;
        assert_eq!(stored_value(0xFFFF, &info), 4095);
    }

    #[test]
    fn fit_keeps_aspect() {
        assert_eq!(fit(2048, 2500, 256, 256, true), (210, 256));
        assert_eq!(fit(512, 512, 1024, 300, true), (300, 300));
        assert_eq!(fit(64, 32, 128, 128, false), (64, 32));
        assert_eq!(fit(640, 480, 128, 128, false), (128, 96));
    }

    #[test]
    fn box_reduce_averages() {
        let img = GrayImage::from_raw(4, 2, vec![0, 2, 10, 10, 4, 6, 20, 20]).unwrap();
        let r = box_reduce(&img, 2);
        assert_eq!((r.width(), r.height()), (2, 1));
        assert_eq!(r.as_raw(), &vec![3, 15]);
    }

    #[test]
    fn ybr_conversion() {
        assert_eq!(ybr_to_rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
    }
}
