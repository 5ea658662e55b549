"""Versioned schema migrations, one folder per backend: ``NNNN_description.sql``, applied in order."""
