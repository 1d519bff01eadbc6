"""Analysis of trained models: sparsity, sinks, dispersion, survivors theory, passkey, extrapolation."""
