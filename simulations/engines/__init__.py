"""The engines a simulation runs on: Flower's SuperLink in simulation mode, its Ray engine, and
the in-process engine; with the fault-injecting ClientApp the reliability tests run."""
