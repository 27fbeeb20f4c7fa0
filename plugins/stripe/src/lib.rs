//! settled connector plugin `stripe` (being written).
