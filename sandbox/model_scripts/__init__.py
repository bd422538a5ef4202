"""Model scripts shipped with taskbus (TOML files; see docs/scripted-model.md)."""
