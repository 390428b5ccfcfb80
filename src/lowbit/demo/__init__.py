"""The demo workload: a small CNN on scikit-learn's bundled digits, quantized every way."""
