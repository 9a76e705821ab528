"""vapi-bridge: SambaNova models behind Vapi's Custom LLM provider."""

__version__ = "0.1.0"
