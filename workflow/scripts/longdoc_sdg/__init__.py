"""longdoc-sdg: grounded question/answer data from PDF documents for vision-language models."""

__version__ = "0.1.0"
