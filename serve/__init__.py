"""Chandler bot's backend: the engine, the character's reply policy and the API (README)."""
import logging

# On CPUs with AVX512-BF16, bitsandbytes warns at import that it cannot fetch an optional kernel
# from the Hugging Face Hub (offline here), then uses its own: noise on every CLI error line.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
