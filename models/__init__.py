"""Models and data built on gtnumba (the Pixel Transformer, issue #5)."""
