"""Step 5: evaluation, the report and figures, latent statistics, the latent dataset and the exports."""
