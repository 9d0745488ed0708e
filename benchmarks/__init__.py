"""metered benchmarks: `make bench` runs every bench_*.py here (or `make bench BENCH=pricing`)."""
