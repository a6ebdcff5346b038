"""BrandGen: on-brand assets from diffusion models, in a browser."""

__version__ = "0.1.0"
