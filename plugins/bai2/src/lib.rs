//! settled connector plugin `bai2` (being written).
