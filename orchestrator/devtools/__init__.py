"""Developer tools for tests and local runs: tiny deterministic models for the real engines."""
