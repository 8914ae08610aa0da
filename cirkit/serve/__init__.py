"""The serve side: `cirkit serve` keeps models warm (`server`), `cirkit query` reaches it (`client`)."""
