"""aitoolbox 1.8's local model loader."""
