"""Training: the plan, the engine, the run wiring, the trainer loop, metrics, compile, the run-dir lock."""
