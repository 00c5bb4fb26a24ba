"""Data feeding definitions for models wrapped with :class:`~aitoolbox.torchtrain.model.ModelWrap`."""
