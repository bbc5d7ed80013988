"""cookiebaker: consented Telegram chat exports → fine-tuned chat responders."""

__version__ = "0.1.0"
