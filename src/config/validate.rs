//! Whole-config checks (to be written).
