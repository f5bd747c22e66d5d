"""The commands, one module per group; `unetr_cli.cli` registers them on the app."""
