"""tools/bench's larger benchmarks: two-process goodput and CLI send latency."""
