//! The one integration-test binary (see STYLE.md habit 10).

mod cli;
mod daemon;
mod helpers;
mod sync;
mod tidy;
