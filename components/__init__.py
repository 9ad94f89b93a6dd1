"""rankbrew components: every capability as plain Python/PyTorch, no Ray inside the core logic."""
