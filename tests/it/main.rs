//! The one integration-test binary (see STYLE.md habit 10).

mod chaos;
mod chaos_helpers;
mod cli;
mod daemon;
mod deploy;
mod emulator;
mod emulator_helpers;
mod helpers;
mod normalize;
mod pg;
mod store;
mod sync;
mod tidy;
mod crash;
mod security;
mod adversarial;
