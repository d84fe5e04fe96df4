"""Everything that runs the product from outside: the engines a simulation runs on, deployment
tooling, studies, benchmarks and the ``fedmmrec`` command line (one room each)."""
