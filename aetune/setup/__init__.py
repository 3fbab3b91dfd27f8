"""Steps 1 and 2: the environment check, the weights registry and downloads (hub)."""
