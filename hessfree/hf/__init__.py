"""hessfree.hf."""
