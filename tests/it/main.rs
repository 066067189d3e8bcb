//! The single integration-test binary.

mod emulator;
mod emulator_helpers;
