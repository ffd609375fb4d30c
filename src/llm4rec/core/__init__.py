"""The bottom layer, torch-free: constants, hashing, logs, locking, memory limits and the
config checks the Snakefile runs at start."""
