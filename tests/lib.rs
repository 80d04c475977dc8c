//! Cross-crate tests live under `integration/`.
