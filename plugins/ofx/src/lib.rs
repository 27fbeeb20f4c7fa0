//! settled connector plugin `ofx` (being written).
