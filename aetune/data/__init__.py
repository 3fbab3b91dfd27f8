"""Datasets: scanning and validating image folders, splitting, the synthetic generator, loading."""
