"""The device side: one ClientApp for simulation and deployment."""
