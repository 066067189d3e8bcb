//! The one integration-test binary.

mod pg;
mod store;
