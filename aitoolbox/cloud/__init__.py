"""Cloud storage integrations used by experiment tracking."""
