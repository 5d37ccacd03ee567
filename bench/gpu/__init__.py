"""The GPU run: prepared here (prepare), run there (run.sh)."""
