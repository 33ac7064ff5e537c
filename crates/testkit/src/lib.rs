//! Test and benchmark support for portswap. Not part of the product.

pub mod agent;
