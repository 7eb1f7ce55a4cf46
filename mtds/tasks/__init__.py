"""Objectives (tasks): one file per objective (its [task] options, the data layout it reads, its
dataset builder and data checks, the forward step with loss and metrics). Listed in mtds/kinds.py;
see mtds/README.md for what a task file provides."""
