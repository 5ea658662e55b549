"""Know Your Bands: find every band logo and album cover in a photo and say which band and album it is."""

__version__ = "0.1.0"
