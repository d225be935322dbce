//! Root-only integration tests: helpers.
