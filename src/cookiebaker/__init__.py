"""cookiebaker: consented group-chat exports (Telegram, WhatsApp, Discord) → fine-tuned chat responders."""

__version__ = "0.1.0"
