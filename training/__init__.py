"""Training jobs (detector); kept apart from serving, which never imports them."""
