"""aitoolbox 1.8's local savers: the experiment folder, model files and result files."""
