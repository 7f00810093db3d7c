"""CLI subcommands that need no broker: replay and schema export."""
