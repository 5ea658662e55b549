"""The encoder service: image -> RootSIFT features, visual words and global vector."""
