"""The InfiniteVL network: vision tower, Gated DeltaNet, attention, decoder."""
