"""Evolution strategies over genomes: EvoTorch problem and searchers, Ray actors, the run loop."""
