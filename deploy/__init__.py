"""api.py's OpenAI server as replicas on Ray Serve (optional: requirements-ray.txt). Ray is imported here and
by its tests only; the single-machine server never loads it."""
