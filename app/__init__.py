"""Text-classification inference service: a batched Hugging Face classifier behind FastAPI."""

__version__ = "0.2.0"
