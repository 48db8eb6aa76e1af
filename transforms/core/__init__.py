"""Plain, Beam-free building blocks: records, conversions, redaction, secrets, retry and rate limits."""
