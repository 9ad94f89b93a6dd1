"""rankbrew pipelines: Ray DAGs that wire the components; YAML profiles in ``configs/``."""
