//! settled connector plugin `qif` (being written).
