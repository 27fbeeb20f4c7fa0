//! settled connector plugin `webform` (being written).
