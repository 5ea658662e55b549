"""The detector service: logo and album-cover boxes (no model until issue 6)."""
