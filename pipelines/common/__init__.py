"""What every Ray Data job shares: joining Ray and sizing actor pools, image sources, decoding."""
