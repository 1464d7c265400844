"""Brute-force references of the losses, written from the papers' / releases' formulas with plain loops (float64,
no vectorisation), used only by the tests."""
