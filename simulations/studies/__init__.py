"""Studies over the product: grids of settings (experiment), explanations, the pooled and library
baselines, and the streaming and population studies."""
