"""A bag as an offline bundle for code competitions, its runtime, and `ledger predict`."""
