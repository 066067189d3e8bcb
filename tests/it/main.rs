//! The one integration-test binary (see STYLE.md habit 10).

mod adversarial;
mod chaos;
mod chaos_helpers;
mod cli;
mod crash;
mod daemon;
mod deploy;
mod emulator;
mod emulator_batch;
mod emulator_helpers;
mod emulator_oauth;
mod emulator_python;
mod emulator_read;
mod groups;
mod helpers;
mod layers;
mod normalize;
mod oauth;
mod outage;
mod pg;
mod replicas;
mod security;
mod store;
mod sync;
mod tidy;
