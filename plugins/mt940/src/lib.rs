//! settled connector plugin `mt940` (being written).
