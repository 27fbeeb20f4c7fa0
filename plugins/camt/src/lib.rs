//! settled connector plugin `camt` (being written).
