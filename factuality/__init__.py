"""Evidence-grounded factuality training suite."""
__version__ = "0.1.0"
