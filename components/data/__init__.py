"""Canonical data: schemas, validation with quarantine, synthetic world, adapters, splits."""
