"""charter-transformers: local Hugging Face models as a charter backend."""
