"""DeepSpeed Mixture-of-Experts and ZeRO training recipes."""

__version__ = "0.1.0"
