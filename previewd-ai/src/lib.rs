//! previewd
