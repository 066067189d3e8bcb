//! The one integration-test binary (see STYLE.md habit 10).

mod cli;
mod daemon;
mod helpers;
mod normalize;
mod sync;
mod tidy;
