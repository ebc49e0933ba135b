"""Teachers: models that answer inputs -> outputs, with a fingerprint."""
