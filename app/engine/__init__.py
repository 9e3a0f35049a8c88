"""The model behind the service: the Classifier protocol and its Hugging Face implementation."""
