"""Which version answers: the pure choice and the immutable routing table."""
