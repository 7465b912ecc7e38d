"""The CPU benchmark and quality scripts (run as files; a package so quality.py can share bench.py's paths)."""
