"""bert-parity harness: run two sides on the same inputs and compare every tap (CONTRACT.md)."""
