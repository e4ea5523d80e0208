"""A running Simdeck on this host and clients of it, for the test suite and the benchmarks."""
