//! DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI.

pub mod accept;
pub mod json;
pub mod multipart;
pub mod negotiate;
pub mod qido;
pub mod stow;
pub mod wado;
pub mod wado_uri;
