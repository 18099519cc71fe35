"""The ledger: one SQLite file, its migrations, and the typed rows it hands back."""
