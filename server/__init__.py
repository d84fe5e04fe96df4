"""The server side: aggregation, federated evaluation, and the run directory."""
