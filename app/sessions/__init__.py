"""Session management: per-session model state, metadata store, locks, expiry and the diff stream."""
