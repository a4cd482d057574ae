//! Redis store (pending).
