//! settled connector plugin `bank-csv` (being written).
