"""A running Simdeck on this host, for the test suite and the benchmarks."""
