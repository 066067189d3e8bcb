//! The one integration-test binary (see STYLE.md habit 10).

mod helpers;
mod sync;
